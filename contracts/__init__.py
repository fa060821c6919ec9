"""payhook's wire contracts: callback and event documents, money, topology, configuration.

No network or database I/O here; imports only the standard library and orjson, so any
consumer can depend on it.
"""

from contracts.callbacks import (
    CALLBACK_SCHEMA_VERSION,
    CallbackReceived,
    RawRequest,
    callback_id,
    decode_callback,
    encode_callback,
)
from contracts.config import Config, Merchant, ProviderAccount, Secret, Settings
from contracts.errors import ConfigError, ContractError, DecodeError, InvalidAmount, UnknownCurrency
from contracts.events import (
    EVENT_TYPES,
    build_event,
    decode_event,
    encode_event,
    event_id,
    event_type,
    routing_key,
)
from contracts.money import exponent_of, format_major, major_to_minor, parse_minor
from contracts.statuses import Kind, Status, VerifiedBy
from contracts.topology import HEADER_ATTEMPT, HEADER_CORRELATION_ID, HEADER_MERCHANT, Topology

__all__ = [
    "CALLBACK_SCHEMA_VERSION",
    "EVENT_TYPES",
    "HEADER_ATTEMPT",
    "HEADER_CORRELATION_ID",
    "HEADER_MERCHANT",
    "CallbackReceived",
    "Config",
    "ConfigError",
    "ContractError",
    "DecodeError",
    "InvalidAmount",
    "Kind",
    "Merchant",
    "ProviderAccount",
    "RawRequest",
    "Secret",
    "Settings",
    "Status",
    "Topology",
    "UnknownCurrency",
    "VerifiedBy",
    "build_event",
    "callback_id",
    "decode_callback",
    "decode_event",
    "encode_callback",
    "encode_event",
    "event_id",
    "event_type",
    "exponent_of",
    "format_major",
    "major_to_minor",
    "parse_minor",
    "routing_key",
]
