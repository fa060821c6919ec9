"""Errors raised while building or reading payhook's wire contracts.

ContractError
├── UnknownCurrency      a currency code ISO 4217 (as we ship it) does not list
├── InvalidAmount        an amount that is not an exact decimal in the currency's minor units
├── DecodeError          a message body that is not a valid contract document
└── ConfigError          a configuration file or environment that cannot be used
"""

from __future__ import annotations

__all__ = ["ConfigError", "ContractError", "DecodeError", "InvalidAmount", "UnknownCurrency"]


class ContractError(Exception):
    """Root of every error raised by ``contracts``."""


class UnknownCurrency(ContractError):
    def __init__(self, code: str) -> None:
        super().__init__(f"unknown currency {code!r}")
        self.code = code


class InvalidAmount(ContractError):
    def __init__(self, value: str, currency: str, reason: str) -> None:
        super().__init__(f"invalid amount {value!r} {currency}: {reason}")
        self.value = value
        self.currency = currency
        self.reason = reason


class DecodeError(ContractError):
    """A body that is not the contract document it claims to be."""


class ConfigError(ContractError):
    """Configuration that cannot be used; the message names the key."""
