"""contracts/asyncapi.yaml says what contracts/ and the relay do, and is valid AsyncAPI 3.0.

The event types come from the code (every kind x status), the providers from the ingress's
provider modules, routing keys from ``contracts.events.routing_key``, and the AMQP properties
from a message the relay really published.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml

from contracts.events import EVENT_TYPES, event_type, routing_key
from contracts.schema import schema_filename
from contracts.statuses import Kind, Status
from contracts.topology import HEADER_CORRELATION_ID, Topology
from ingress.providers import PROVIDERS
from tests.ledger.factory import callback
from tests.relaying import outbox, outbox_row
from tests.servers import BrokerJanitor

ROOT = Path(__file__).parents[2]
DOCUMENT = ROOT / "contracts" / "asyncapi.yaml"
# The official AsyncAPI 3.0.0 JSON Schema, vendored (see README.md beside this file).
ASYNCAPI_SCHEMA = Path(__file__).with_name("asyncapi-3.0.0.schema.json")

# The document's key for each event type: the type without its "payhook." prefix.
TYPES: dict[str, tuple[Kind, Status]] = {
    event_type(kind, status).removeprefix("payhook."): (kind, status)
    for kind in Kind
    for status in Status
}
# Keywords whose meaning is the same in JSON Schema draft-07 and 2020-12: what the schema
# files may use while the document declares them as draft-07 for AsyncAPI tools.
SHARED_KEYWORDS = {
    "$schema", "$id", "title", "description", "type", "required", "properties", "const",
    "enum", "minLength", "maxLength", "pattern", "format", "additionalProperties",
    "contentEncoding", "items", "minimum", "maximum", "default", "examples",
}  # fmt: skip


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return doc


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a ``$ref``: ``#/json/pointer`` in the document, or a file beside it."""
    target, _, pointer = ref.partition("#")
    node: Any = document
    if target:
        node = json.loads((DOCUMENT.parent / target).read_text(encoding="utf-8"))
    for part in filter(None, pointer.split("/")):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(document, node["$ref"])
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_the_code_defines_every_kind_and_status_as_an_event_type() -> None:
    assert {f"payhook.{key}" for key in TYPES} == set(EVENT_TYPES)


def test_one_channel_operation_and_message_per_event_type(document: dict[str, Any]) -> None:
    assert set(document["channels"]) == set(TYPES)
    assert set(document["operations"]) == set(TYPES)
    assert set(document["components"]["messages"]) == set(TYPES)
    for key in TYPES:
        channel = document["channels"][key]
        assert channel["messages"] == {key: {"$ref": f"#/components/messages/{key}"}}
        assert deref(document, channel["messages"][key])["name"] == f"payhook.{key}"
        operation = document["operations"][key]
        assert operation["action"] == "send"
        assert operation["channel"] == {"$ref": f"#/channels/{key}"}
        assert operation["messages"] == [{"$ref": f"#/channels/{key}/messages/{key}"}]


def test_channel_addresses_are_the_routing_keys_payhook_publishes(
    document: dict[str, Any],
) -> None:
    for key, (kind, status) in TYPES.items():
        channel = document["channels"][key]
        address = channel["address"]
        assert re.findall(r"{(\w+)}", address) == ["provider"], address
        providers = deref(document, channel["parameters"]["provider"])["enum"]
        assert sorted(providers) == sorted(PROVIDERS)
        for provider in PROVIDERS:
            assert address.replace("{provider}", provider) == routing_key(kind, status, provider)
        amqp = deref(document, channel["bindings"])["amqp"]
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"] == {
            "name": Topology().events_exchange,
            "type": "topic",  # as workers.amqp.declare_topology declares it
            "durable": True,
            "autoDelete": False,
            "vhost": "/",
        }


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    found = list(refs(document))
    assert len(found) > 4 * len(TYPES)
    for ref in found:
        assert resolve(document, ref) is not None, ref


def test_message_payloads_are_the_event_schemas(document: dict[str, Any]) -> None:
    for key in TYPES:
        message = deref(document, document["components"]["messages"][key])
        payload = message["payload"]
        assert payload["schemaFormat"] == "application/schema+json;version=draft-07"
        ref = payload["schema"]["$ref"]
        assert ref == f"./schemas/{schema_filename(f'payhook.{key}')}"
        assert resolve(document, ref)["properties"]["type"] == {"const": f"payhook.{key}"}
        assert message["bindings"]["amqp"]["messageType"] == f"payhook.{key}"
        assert message["traits"] == [{"$ref": "#/components/messageTraits/cloudEvent"}]
    trait = document["components"]["messageTraits"]["cloudEvent"]
    assert trait["headers"]["required"] == [HEADER_CORRELATION_ID]
    assert trait["correlationId"]["location"] == f"$message.header#/{HEADER_CORRELATION_ID}"


def _keywords(schema: Any) -> Iterator[str]:
    if not isinstance(schema, dict):
        return
    yield from schema
    for name, sub in schema.items():
        if name == "properties":
            for value in sub.values():
                yield from _keywords(value)
        elif name in {"items", "additionalProperties"}:
            yield from _keywords(sub)


def test_schema_files_mean_the_same_in_draft_07(document: dict[str, Any]) -> None:
    for key in TYPES:
        ref = document["components"]["messages"][key]["payload"]["schema"]["$ref"]
        unknown = set(_keywords(resolve(document, ref))) - SHARED_KEYWORDS
        assert not unknown, (
            f"{ref} uses {sorted(unknown)}: check them in draft-07 or change the schemaFormat"
        )


def test_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8")))
    errors = [f"{e.json_path}: {e.message[:300]}" for e in validator.iter_errors(document)]
    assert errors == []
    # The vendored schema does bite (its bindings and refs resolve offline).
    broken = json.loads(json.dumps(document))
    broken["components"]["channelBindings"]["eventsExchange"]["amqp"]["exchange"]["type"] = "x"
    broken["operations"]["payment.succeeded"]["action"] = "publish"
    assert len(list(validator.iter_errors(broken))) >= 2


def _expected(value: Any, body: dict[str, Any], headers: dict[str, Any]) -> Any:
    """A value of ``x-amqp-properties``: a literal, or a runtime expression into the message."""
    if isinstance(value, str) and value.startswith("$message."):
        where, _, pointer = value.removeprefix("$message.").partition("#")
        node: Any = {"payload": body, "header": headers}[where]
        for part in filter(None, pointer.split("/")):
            node = node[part]
        return node
    return value


async def test_amqp_properties_are_what_the_relay_sends(
    document: dict[str, Any],
    database_url: str,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: BrokerJanitor,
    db: object,
) -> None:
    queue_name = amqp_cleanup.register(f"{namespace}.asyncapi-check")
    async with outbox(database_url, amqp_url, namespace) as box:
        queue = await box.channel.declare_queue(queue_name, durable=True)
        await queue.bind(Topology(namespace).events_exchange, routing_key="#")
        row = outbox_row(callback(Status.SUCCEEDED, "T-asyncapi", correlation_id="corr-1"))
        await box.emit(row)
        message = await queue.get(timeout=10)
        await message.ack()
    body = orjson.loads(message.body)
    key = row.routing_key.rsplit(".", 1)[0]
    assert message.routing_key == row.routing_key
    assert document["channels"][key]["address"].replace("{provider}", "paysera") == row.routing_key
    trait = document["components"]["messageTraits"]["cloudEvent"]
    headers = dict(message.headers)
    jsonschema.validate(headers, trait["headers"])
    for name, value in trait["x-amqp-properties"].items():
        assert getattr(message, name) == _expected(value, body, headers), name
    assert message.content_type == trait["contentType"]
    relay = document["components"]["operationTraits"]["relay"]["bindings"]["amqp"]
    assert message.delivery_mode == relay["deliveryMode"]
    amqp_message = document["components"]["messages"][key]["bindings"]["amqp"]
    assert message.type == amqp_message["messageType"] == body["type"]
    jsonschema.validate(body, resolve(document, f"./schemas/{schema_filename(body['type'])}"))
