"""The console in a real browser (Debian's headless Chromium, driven by Selenium) against a
real payhook: every role in-process on the real Postgres and RabbitMQ, callbacks sent by the
provider simulator, and a merchant on 127.0.0.1 that answers 500 until it is told to recover.

An operator signs in, finds the payment, opens it, replays its failed webhook by clicking, and
the merchant receives it, correctly signed. Screenshots of every page go to
``.local/screenshots/`` (git-ignored). Selenium runs in a thread: its calls block, and the
system under test runs on this test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp import web
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from standardwebhooks import Webhook

from contracts.config import Config, parse_config
from contracts.topology import Topology
from ingress.providers import PROVIDERS
from ingress.providers.base import SimulatedPayment
from ingress.simulator import simulate_and_send
from tests.e2e.harness import running_system, system_settings
from tests.webhooks.helpers import MerchantServer

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".local" / "screenshots"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-admin-token-" + secrets.token_hex(8)
PAYCORE_KEY = "paycore-live-key-for-the-browser-test"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()

pytestmark = pytest.mark.timeout(240)


def _config(merchant_url: str) -> Config:
    data: dict[str, Any] = {
        # One retry, an hour away: after the merchant's 500 the delivery is failing.
        "webhooks": {"schedule": [0, 3600]},
        "merchants": {
            "shop": {
                "webhook_url": merchant_url,
                "secrets": ["env:SHOP_SECRET"],
                "allow_private": True,
            }
        },
        "providers": {
            "paycore": {"main": {"merchant": "shop", "live_key": "env:PAYCORE_KEY"}},
            "paysepro": {
                "main": {
                    "merchant": "shop",
                    "uid": "12345",
                    "mid": "54321",
                    "allowed_ips": ["127.0.0.1"],
                }
            },
        },
        "admin": {"tokens": ["env:ADMIN_TOKEN"]},
    }
    env = {"SHOP_SECRET": WEBHOOK_SECRET, "PAYCORE_KEY": PAYCORE_KEY, "ADMIN_TOKEN": TOKEN}
    return parse_config(data, environ=env)


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    if not (os.access(CHROMEDRIVER, os.X_OK) and os.access(CHROMIUM, os.X_OK)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMEDRIVER} is missing: scripts/test installs it", pytrace=False)
        pytest.skip(f"{CHROMEDRIVER} is missing: scripts/test installs chromium-driver")
    # Selenium's manager would otherwise try to download drivers and send statistics.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="payhook-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(browser: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / f"{name}.png"))


def _wait(browser: WebDriver, seconds: float = 15) -> WebDriverWait[WebDriver]:
    # Live parts are replaced while we read them: an element found a moment ago may be gone.
    return WebDriverWait(
        browser, seconds, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )


def _sign_in_and_open_payment(browser: WebDriver, base: str, transaction_id: str) -> str:
    """Log in, search the payment by its transaction id, open it; returns its page source."""
    browser.get(f"{base}/console/")
    _wait(browser).until(ec.url_contains("/console/login"))
    _shot(browser, "01-login")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "sign-in").click()
    _wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".error"), "not one"))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    _wait(browser).until(ec.presence_of_element_located((By.ID, "live")))
    # The overview refreshes itself (console.js polls its fragment): wait for one refresh.
    first = browser.find_element(By.CSS_SELECTOR, "#live .updated").text
    _wait(browser, 20).until(
        lambda b: b.find_element(By.CSS_SELECTOR, "#live .updated").text != first
    )
    _wait(browser).until(ec.text_to_be_present_in_element((By.ID, "attention-count"), "1"))
    _shot(browser, "02-overview")

    browser.find_element(By.LINK_TEXT, "Payments").click()
    _wait(browser).until(ec.presence_of_element_located((By.ID, "payment-search")))
    field = browser.find_element(By.NAME, "transaction_id")
    field.send_keys(transaction_id)
    browser.find_element(By.ID, "search").click()
    _wait(browser).until(ec.url_contains("transaction_id="))
    links = browser.find_elements(By.CSS_SELECTOR, "#payments a.payment-link")
    assert [a.text for a in links] == [transaction_id]
    _shot(browser, "03-payments-search")
    links[0].click()
    shown = (By.ID, "transaction-id")
    _wait(browser).until(ec.text_to_be_present_in_element(shown, transaction_id))
    assert browser.find_element(By.ID, "payment-state").text == "succeeded"
    assert browser.find_element(By.CSS_SELECTOR, ".delivery-state").text == "failing"
    _shot(browser, "04-payment-failing-delivery")
    raw = browser.find_element(By.CSS_SELECTOR, "details.callback")
    browser.execute_script("arguments[0].scrollIntoView()", raw)
    _shot(browser, "04b-payment-raw-request-masked")
    return browser.page_source


def _replay_by_clicking(browser: WebDriver) -> None:
    browser.find_element(By.CSS_SELECTOR, "button.replay").click()
    notice = (By.CSS_SELECTOR, ".notice")
    _wait(browser).until(ec.text_to_be_present_in_element(notice, "Replayed 1"))


def _see_it_delivered(browser: WebDriver) -> None:
    def delivered(b: WebDriver) -> bool:
        b.refresh()
        return bool(b.find_element(By.CSS_SELECTOR, ".delivery-state").text == "delivered")

    _wait(browser, 20).until(delivered)
    rows = browser.find_elements(By.CSS_SELECTOR, ".attempts tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[4].text for r in rows] == ["500", "200"]
    _shot(browser, "05-payment-delivered")


def _other_pages(browser: WebDriver, base: str) -> str:
    pages = [
        ("attention", "06-attention"),
        ("deliveries?state=dead&state=failing", "07-deliveries"),
        ("endpoints", "08-endpoints"),
        ("dead-letters?peek=ledger", "09-dead-letters"),
    ]
    sources = []
    for path, name in pages:
        browser.get(f"{base}/console/{path}")
        _wait(browser).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
        assert "Refused" not in browser.title
        sources.append(browser.page_source)
        _shot(browser, name)
    browser.get(f"{base}/console/attention")
    browser.find_element(By.CSS_SELECTOR, "#payments a.payment-link").click()
    _wait(browser).until(ec.presence_of_element_located((By.ID, "attention")))
    _shot(browser, "10-held-payment")
    sources.append(browser.page_source)
    return "\n".join(sources)


async def _send(config: Config, base: str, provider: str, payment: SimulatedPayment) -> None:
    out = io.StringIO()
    status = await simulate_and_send(
        config.accounts[(provider, "main")],
        PROVIDERS[provider],
        payment,
        f"{base}/callbacks/{provider}/main",
        retries=False,
        time_scale=0,
        out=out,
    )
    assert status == 0, out.getvalue()


async def _poison_the_ledger(amqp_url: str, topology: Topology) -> None:
    """A message the ledger cannot read: it rejects it and the queue dead-letters it."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"not a callback", message_id="poison-1"),
            routing_key=topology.ledger_queue,
        )
        async with asyncio.timeout(20):
            while True:
                probe = await connection.channel()
                dead = await probe.declare_queue(topology.ledger_dead_queue, passive=True)
                await probe.close()
                if dead.declaration_result.message_count:
                    return
                await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def _depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def _wait_for_row(db: asyncpg.Connection, query: str, *args: Any) -> None:
    async with asyncio.timeout(20):
        while await db.fetchval(query, *args) is None:  # noqa: ASYNC110 - other roles' writes
            await asyncio.sleep(0.05)


async def test_operator_finds_a_payment_and_replays_its_failed_webhook(
    driver: WebDriver,
    database_url: str,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    amqp_cleanup: Any,
) -> None:
    healthy = False

    async def respond(n: int, _: web.Request) -> web.StreamResponse:
        return web.Response(status=200 if healthy else 500, text="ok" if healthy else "down")

    async with MerchantServer(respond).serving() as merchant:
        config = _config(merchant.url)
        settings = system_settings(database_url, amqp_url, namespace)
        topology = Topology(namespace)
        for delay in (3600, settings.webhook_busy_delay_s):  # the delay queues it declares
            amqp_cleanup.register(topology.webhooks_retry_queue(delay))
        async with running_system(settings, config) as ingress:
            console = f"http://127.0.0.1:{settings.admin_port}"
            transaction_id = f"cpi_{secrets.token_hex(6).upper()}"
            await _send(config, ingress, "paycore", SimulatedPayment(
                order_id="ORD-BROWSER-1", amount="22.00", currency="USD", status="succeeded",
                transaction_id=transaction_id,
            ))  # fmt: skip
            # Held: proven by its address only, with the payer's e-mail in the raw request.
            await _send(config, ingress, "paysepro", SimulatedPayment(
                order_id="ORD-BROWSER-2", amount="12.50", currency="EUR", status="succeeded",
                transaction_id="SP-BROWSER-1",
            ))  # fmt: skip
            # Two events (the payment's, and the hold's amount_mismatch), each failed once.
            await merchant.wait_for(2)
            event_id = await db.fetchval(
                "SELECT id FROM events WHERE subject = $1 AND type = 'payhook.payment.succeeded'",
                transaction_id,
            )
            await _wait_for_row(
                db,
                "SELECT 1 FROM webhook_deliveries"
                " WHERE event_id = $1 AND state = 'pending' AND attempts = 1",
                event_id,
            )
            await _wait_for_row(db, "SELECT 1 FROM payments WHERE attention IS NOT NULL")
            await _poison_the_ledger(amqp_url, topology)

            source = await asyncio.to_thread(
                _sign_in_and_open_payment, driver, console, transaction_id
            )
            # The raw request is there, its signature header masked.
            assert "X-Signature" in source
            assert "[masked]" in source
            raw = await db.fetchval(
                "SELECT c.body FROM callbacks c JOIN payments p ON p.id = c.payment_id"
                " WHERE p.transaction_id = $1",
                transaction_id,
            )
            signature = orjson.loads(raw)["raw"]["headers"]["X-Signature"]
            assert len(signature) > 20
            assert signature not in source

            healthy = True  # the merchant is back
            await asyncio.to_thread(_replay_by_clicking, driver)
            await merchant.wait_for(3)
            await asyncio.to_thread(_see_it_delivered, driver)
            others = await asyncio.to_thread(_other_pages, driver, console)
            assert "payer@example.com" not in others
            assert "no_expectation" in others
            assert "First 1 of 1" in others  # the poison message, looked at, left in place
            assert "poison-1" in others
            assert await _depth(amqp_url, topology.ledger_dead_queue) == 1

    first, second = [r for r in merchant.requests if r.headers["webhook-id"] == event_id]
    assert len(merchant.requests) == 3  # the other event was not replayed
    event = Webhook(WEBHOOK_SECRET).verify(second.body, second.headers)
    assert event["subject"] == transaction_id
    assert event["type"] == "payhook.payment.succeeded"
    assert first.body == second.body
    shots = sorted(p.name for p in SHOTS.glob("*.png"))
    assert {"01-login.png", "04-payment-failing-delivery.png", "05-payment-delivered.png"} <= set(
        shots
    )
