"""Issue 2's walking skeleton, end to end on real servers: a signed Paysera callback becomes a
ledger entry, a downstream CloudEvent and a signed merchant webhook — exactly once."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aio_pika
import aiohttp
import asyncpg
import jsonschema
import orjson
import pytest
import standardwebhooks
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from contracts.callbacks import decode_callbacks
from contracts.config import Config, parse_config
from contracts.schema import event_schema
from contracts.topology import Topology
from tests.e2e.harness import EventTap, Merchant, TcpProxy, running_system, system_settings

PASSWORD = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"e2e-merchant-secret-0123456789").decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_config(tmp_path: Path, key: rsa.RSAPrivateKey, merchant_url: str) -> Config:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "paysera.pem").write_bytes(pem)
    data: dict[str, Any] = {
        "webhooks": {"schedule": [0, 1]},
        "merchants": {
            "shop": {
                "webhook_url": merchant_url,
                "secrets": ["env:SHOP_SECRET"],
                "allow_private": True,
            },
        },
        "providers": {
            "paysera": {
                "main": {
                    "merchant": "shop",
                    "project_id": "123456",
                    "password": "env:PAYSERA_PASSWORD",
                    "public_key_file": str(tmp_path / "paysera.pem"),
                },
            }
        },
    }
    env = {"SHOP_SECRET": WEBHOOK_SECRET, "PAYSERA_PASSWORD": PASSWORD}
    return parse_config(data, base_dir=tmp_path, environ=env)


def paysera_query(
    key: rsa.RSAPrivateKey,
    *,
    requestid: str = "987654321",
    projectid: str = "123456",
    amount: str = "1250",
) -> dict[str, str]:
    """A Paysera callback as lib-webtopay signs it: url-safe base64 ``data`` plus ss1/ss2/ss3."""
    fields = {
        "projectid": projectid,
        "orderid": "ORD-1001",
        "lang": "ENG",
        "amount": amount,
        "currency": "EUR",
        "payment": "hanza",
        "country": "LT",
        "paytext": "Order ORD-1001",
        "status": "1",
        "test": "0",
        "payamount": amount,
        "paycurrency": "EUR",
        "requestid": requestid,
        "version": "1.6",
        "type": "macro",
    }
    data = (
        base64.b64encode(urlencode(fields).encode()).decode().translate(str.maketrans("+/", "-_"))
    )

    def sign(algorithm: hashes.HashAlgorithm) -> str:
        raw = key.sign(data.encode("ascii"), padding.PKCS1v15(), algorithm)
        return base64.b64encode(raw).decode().translate(str.maketrans("+/", "-_"))

    import hashlib

    return {
        "data": data,
        "ss1": hashlib.md5((data + PASSWORD).encode()).hexdigest(),
        "ss2": sign(hashes.SHA1()),
        "ss3": sign(hashes.SHA256()),
    }


async def ledger_counts(db: asyncpg.Connection) -> tuple[int, int, int, int]:
    payments = await db.fetchval("SELECT count(*) FROM payments")
    entries = await db.fetchval("SELECT count(*) FROM journal_entries")
    postings = await db.fetchval("SELECT count(*) FROM postings")
    events = await db.fetchval("SELECT count(*) FROM events")
    return payments, entries, postings, events


async def test_signed_callback_reaches_ledger_events_and_merchant(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    merchant = Merchant()
    async with merchant.serving(), EventTap(amqp_url, namespace) as tap:
        config = make_config(tmp_path, rsa_key, merchant.url)
        settings = system_settings(database_url, amqp_url, namespace)
        async with running_system(settings, config) as base, aiohttp.ClientSession() as http:
            url = f"{base}/callbacks/paysera/main"
            async with http.post(
                url, data=paysera_query(rsa_key), headers={"X-Request-Id": "corr-e2e-1"}
            ) as resp:
                assert resp.status == 200
                assert await resp.text() == "OK"
            await tap.drain(expect=1)
            await merchant.wait_for(1)

    payment = await db.fetchrow("SELECT * FROM payments")
    assert payment["state"] == "succeeded"
    assert (payment["amount"], payment["paid"], payment["currency"]) == (1250, 1250, "EUR")
    postings = await db.fetch("SELECT account, currency, amount FROM postings ORDER BY amount")
    assert [(p["currency"], p["amount"]) for p in postings] == [("EUR", -1250), ("EUR", 1250)]
    assert sum(p["amount"] for p in postings) == 0
    callback = await db.fetchrow("SELECT correlation_id FROM callbacks")
    assert callback["correlation_id"] == "corr-e2e-1"

    [event] = tap.events
    jsonschema.validate(event, event_schema(event["type"]))
    assert event["type"] == "payhook.payment.succeeded"
    assert event["subject"] == "987654321"
    assert event["data"]["amount"] == 1250
    assert event["data"]["order_id"] == "ORD-1001"
    assert event["correlationid"] == "corr-e2e-1"
    assert tap.message_ids == [event["id"]]

    [(headers, body)] = merchant.requests
    verified = standardwebhooks.Webhook(WEBHOOK_SECRET).verify(body, headers)
    assert verified["id"] == event["id"]
    assert headers["webhook-id"] == event["id"]
    assert orjson.loads(body) == event


async def test_resends_and_concurrent_duplicates_count_once(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    merchant = Merchant()
    query = paysera_query(rsa_key, requestid="555")
    async with merchant.serving(), EventTap(amqp_url, namespace) as tap:
        config = make_config(tmp_path, rsa_key, merchant.url)
        settings = system_settings(database_url, amqp_url, namespace)
        async with running_system(settings, config) as base, aiohttp.ClientSession() as http:
            url = f"{base}/callbacks/paysera/main"

            async def send() -> tuple[int, str]:
                async with http.get(url, params=query) as resp:
                    return resp.status, await resp.text()

            # Paysera's own resends (one after another), then a burst of 10 at once.
            answers = [await send() for _ in range(4)]
            answers += await asyncio.gather(*(send() for _ in range(10)))
            assert answers == [(200, "OK")] * 14
            await tap.drain(expect=1, settle=1.5)
            await merchant.wait_for(1)
            await asyncio.sleep(1.0)  # room for a wrong second webhook to show up

    assert await ledger_counts(db) == (1, 1, 2, 1)
    assert await db.fetchval("SELECT count(*) FROM callbacks") == 1
    assert len(tap.events) == 1
    assert len(merchant.requests) == 1


@pytest.mark.parametrize(
    ("tamper", "status"),
    [
        ("data", 401),  # data changed after signing
        ("ss3", 401),  # a signature made with another key
        ("projectid", 422),  # genuinely signed, but for another project
        ("missing", 400),  # no data at all
    ],
)
async def test_forged_callbacks_are_refused_and_leave_no_trace(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    tamper: str,
    status: int,
) -> None:
    query = paysera_query(rsa_key)
    if tamper == "data":
        other = paysera_query(rsa_key, amount="99999")
        query["data"] = other["data"]
        query.pop("ss1")
    elif tamper == "ss3":
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        query["ss3"] = paysera_query(stranger)["ss3"]
    elif tamper == "projectid":
        query = paysera_query(rsa_key, projectid="999")
    else:
        query = {}
    merchant = Merchant()
    async with merchant.serving():
        config = make_config(tmp_path, rsa_key, merchant.url)
        settings = system_settings(database_url, amqp_url, namespace)
        async with (
            running_system(settings, config, roles=("ingress",)) as base,
            aiohttp.ClientSession() as http,
        ):
            async with http.post(f"{base}/callbacks/paysera/main", data=query) as resp:
                assert resp.status == status
                assert (await resp.text()).strip()  # a short reason, never empty

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        ledger = await channel.declare_queue(Topology(namespace).ledger_queue, passive=True)
        assert ledger.declaration_result.message_count == 0
    assert await ledger_counts(db) == (0, 0, 0, 0)
    assert merchant.requests == []


async def test_unknown_account_is_404_and_broker_loss_is_503_never_ok(
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    from urllib.parse import urlsplit

    config = make_config(tmp_path, rsa_key, "http://127.0.0.1:9/hooks")
    broker = urlsplit(amqp_url)
    async with TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672) as proxy:
        proxied = amqp_url.replace(f":{broker.port}", f":{proxy.port}")
        settings = system_settings(database_url, proxied, namespace, publish_timeout_s=2.0)
        async with (
            running_system(settings, config, roles=("ingress",)) as base,
            aiohttp.ClientSession() as http,
        ):
            async with http.post(f"{base}/callbacks/paysera/nobody", data={}) as resp:
                assert resp.status == 404
            await proxy.cut()  # the broker is gone for this ingress
            await asyncio.sleep(0.2)
            async with http.post(
                f"{base}/callbacks/paysera/main", data=paysera_query(rsa_key)
            ) as resp:
                assert resp.status == 503
                assert await resp.text() != "OK"
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200


async def _queued_callbacks(amqp_url: str, namespace: str) -> tuple[int, list[str]]:
    """Take every message off the ledger queue: (message count, transaction ids in them)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(Topology(namespace).ledger_queue, passive=True)
        messages = 0
        ids: list[str] = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            messages += 1
            ids += [callback.transaction_id for callback, _ in decode_callbacks(message.body)]
        return messages, ids


async def test_callbacks_arriving_together_share_one_confirmed_message(
    database_url: str, amqp_url: str, namespace: str, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Throughput comes from batching concurrent callbacks into one confirmed publish; each
    one must still be in the broker exactly once when its provider gets ``OK``."""
    config = make_config(tmp_path, rsa_key, "http://127.0.0.1:9/hooks")
    settings = system_settings(database_url, amqp_url, namespace)
    queries = [paysera_query(rsa_key, requestid=f"batch-{n}") for n in range(60)]
    async with (
        running_system(settings, config, roles=("ingress",)) as base,
        aiohttp.ClientSession() as http,
    ):

        async def send(query: dict[str, str]) -> tuple[int, str]:
            async with http.post(f"{base}/callbacks/paysera/main", data=query) as resp:
                return resp.status, await resp.text()

        answers = await asyncio.gather(*(send(q) for q in queries))
    assert answers == [(200, "OK")] * len(queries)
    messages, ids = await _queued_callbacks(amqp_url, namespace)
    assert sorted(ids) == sorted(f"batch-{n}" for n in range(60))
    assert messages < len(queries)


async def test_a_refused_batch_fails_every_request_in_it(
    database_url: str, amqp_url: str, namespace: str, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """With no queue bound, the broker returns the mandatory publish: no request may get ``OK``;
    once the binding is back, the providers' resends are all accepted."""
    config = make_config(tmp_path, rsa_key, "http://127.0.0.1:9/hooks")
    settings = system_settings(database_url, amqp_url, namespace)
    topology = Topology(namespace)
    queries = [paysera_query(rsa_key, requestid=f"refused-{n}") for n in range(20)]
    async with (
        running_system(settings, config, roles=("ingress",)) as base,
        aiohttp.ClientSession() as http,
        await aio_pika.connect(amqp_url) as connection,
    ):
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.ledger_queue, passive=True)

        async def send_all() -> list[int]:
            async def send(query: dict[str, str]) -> int:
                async with http.post(f"{base}/callbacks/paysera/main", data=query) as resp:
                    return resp.status

            return await asyncio.gather(*(send(q) for q in queries))

        await queue.unbind(topology.callbacks_exchange, "callback.#")
        assert await send_all() == [503] * len(queries)
        await queue.bind(topology.callbacks_exchange, "callback.#")
        assert await send_all() == [200] * len(queries)
    _, ids = await _queued_callbacks(amqp_url, namespace)
    assert sorted(ids) == sorted(f"refused-{n}" for n in range(20))


async def test_ingress_processes_can_share_one_port(
    database_url: str, amqp_url: str, namespace: str, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """``PAYHOOK_LISTEN_REUSE_PORT``: one ingress per core behind the same port."""
    config = make_config(tmp_path, rsa_key, "http://127.0.0.1:9/hooks")
    settings = system_settings(database_url, amqp_url, namespace, listen_reuse_port=True)
    async with (
        running_system(settings, config, roles=("ingress",)) as base,
        running_system(settings, config, roles=("ingress",)) as same_base,
        aiohttp.ClientSession() as http,
    ):
        assert same_base == base
        for n in range(4):
            query = paysera_query(rsa_key, requestid=f"shared-{n}")
            async with http.post(f"{base}/callbacks/paysera/main", data=query) as resp:
                assert (resp.status, await resp.text()) == (200, "OK")
    _, ids = await _queued_callbacks(amqp_url, namespace)
    assert sorted(ids) == [f"shared-{n}" for n in range(4)]
