"""Console sign-in, sessions and CSRF, through the real admin app and its middleware."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from contracts.config import Secret, Settings
from workers.console.auth import COOKIE_NAME, LoginLimiter, Sessions
from workers.ledger.admin import build_admin_app

from .conftest import ADMIN_TOKEN, OTHER_TOKEN, console_config, signed_in

Client = TestClient[Any, Any]


async def test_every_page_needs_a_session(console: Client) -> None:
    for path in ("/console/", "/console/payments", "/console/deliveries", "/console/dead-letters"):
        response = await console.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"] == f"/console/login?next={path}"
    api = await console.get("/console/api/overview", allow_redirects=False)
    assert api.status == 401
    assert (await api.json()) == {"error": "not signed in"}
    # The admin listener's bearer token is not a console session, and vice versa.
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await console.get("/console/", headers=bearer, allow_redirects=False)
    assert response.status == 303
    assert (await console.get("/payments/paysera/T1")).status == 401
    login = await console.get("/console/login")
    assert login.status == 200
    assert 'name="token"' in await login.text()


async def test_a_wrong_token_is_refused_and_sets_no_cookie(console: Client) -> None:
    response = await console.post(
        "/console/login", data={"token": "guess", "next": "/console/"}, allow_redirects=False
    )
    assert response.status == 401
    assert "not one of the admin tokens" in await response.text()
    assert COOKIE_NAME not in response.cookies
    assert (await console.get("/console/", allow_redirects=False)).status == 303


async def test_login_sets_a_strict_cookie_and_lets_the_operator_in(console: Client) -> None:
    response = await console.post(
        "/console/login",
        data={"token": f"  {OTHER_TOKEN}\n", "next": "/console/payments?state=failed"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == "/console/payments?state=failed"
    cookie = response.cookies[COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"
    assert cookie["max-age"] == str(12 * 3600)
    assert not cookie["secure"]  # plain http here; see the cookie_secure test
    page = await console.get("/console/payments", allow_redirects=False)
    assert page.status == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    # Logout forgets the cookie.
    csrf = await signed_in(console)
    out = await console.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303
    assert out.cookies[COOKIE_NAME].value == ""
    assert (await console.get("/console/", allow_redirects=False)).status == 303


async def test_next_never_leaves_the_console(console: Client) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/orders", "/console\\@evil"):
        response = await console.post(
            "/console/login", data={"token": ADMIN_TOKEN, "next": target}, allow_redirects=False
        )
        assert response.status == 303
        assert response.headers["Location"] == "/console/", target


async def test_cookie_secure_follows_the_option(
    pool: asyncpg.Pool[Any], settings: Settings
) -> None:
    app = build_admin_app(pool, console_config(cookie_secure=True), settings)
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/console/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
        )
        assert response.status == 303
        assert response.cookies[COOKIE_NAME]["secure"] is True


async def test_a_tampered_cookie_is_refused(console: Client) -> None:
    await signed_in(console)
    good = console.session.cookie_jar.filter_cookies(console.make_url("/console/"))[COOKIE_NAME]
    version, fp, expires, nonce, mac = good.value.split(".")
    forged = [
        f"{version}.{fp}.{int(expires) + 86400}.{nonce}.{mac}",  # a longer life
        f"{version}.{fp}.{expires}.{nonce}x.{mac}",  # another nonce (another CSRF token)
        f"{version}.{fp}.{expires}.{nonce}.{mac[:-2]}AA",  # a guessed signature
        f"{version}.0000000000000000.{expires}.{nonce}.{mac}",  # another token's
        "garbage",
    ]
    for value in forged:
        console.session.cookie_jar.clear()
        response = await console.get(
            "/console/", cookies={COOKIE_NAME: value}, allow_redirects=False
        )
        assert response.status == 303, value
    console.session.cookie_jar.clear()
    response = await console.get(
        "/console/endpoints", cookies={COOKIE_NAME: good.value}, allow_redirects=False
    )
    assert response.status == 200


async def test_every_action_needs_the_sessions_csrf_token(
    console: Client, db: asyncpg.Connection
) -> None:
    csrf = await signed_in(console)
    action = "/console/endpoints/shop/disable"
    missing = await console.post(action, data={"reason": "x"}, allow_redirects=False)
    assert missing.status == 403
    # The last character changed, never to itself (one token in 64 ends in "A" already).
    last = "B" if csrf.endswith("A") else "A"
    wrong = await console.post(action, data={"csrf": csrf[:-1] + last, "reason": "x"})
    assert wrong.status == 403
    # Another session's token is wrong for this one.
    other = Sessions([Secret(ADMIN_TOKEN)])
    cookie = other.login(ADMIN_TOKEN)
    assert cookie is not None
    session = other.verify(cookie)
    assert session is not None
    stolen = await console.post(action, data={"csrf": session.csrf, "reason": "x"})
    assert stolen.status == 403
    # The right token from another site's page is refused too.
    cross = await console.post(
        action,
        data={"csrf": csrf, "reason": "x"},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert cross.status == 403
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoints") == 0

    ok = await console.post(
        action,
        data={"csrf": csrf, "reason": "maintenance"},
        headers={"Origin": str(console.make_url("")).rstrip("/")},
        allow_redirects=False,
    )
    assert ok.status == 303
    assert ok.headers["Location"] == "/console/endpoints?notice=disabled&n=0"
    row = await db.fetchrow("SELECT disabled_reason FROM webhook_endpoints WHERE merchant = 'shop'")
    assert row["disabled_reason"] == "maintenance"


def test_sessions_work_across_processes_and_end_with_their_token() -> None:
    tokens = [Secret(ADMIN_TOKEN), Secret(OTHER_TOKEN)]
    one, two = Sessions(tokens), Sessions(tokens)  # two admin processes, same config
    cookie = one.login(OTHER_TOKEN)
    assert cookie is not None
    a, b = one.verify(cookie), two.verify(cookie)
    assert a is not None
    assert a == b
    assert Sessions([Secret(ADMIN_TOKEN)]).verify(cookie) is None  # its token was removed
    assert Sessions([Secret(OTHER_TOKEN)]).verify(cookie) == a  # the other one was
    assert one.verify(cookie, now=time.time() + 12 * 3600 + 1) is None  # expired
    assert Sessions([]).login(ADMIN_TOKEN) is None
    assert one.login("") is None


def test_login_limiter_counts_failures_per_address() -> None:
    limiter = LoginLimiter(limit=3, window_s=60)
    for _ in range(3):
        assert not limiter.blocked("10.0.0.1", now=100.0)
        limiter.failed("10.0.0.1", now=100.0)
    assert limiter.blocked("10.0.0.1", now=101.0)
    assert not limiter.blocked("10.0.0.2", now=101.0)
    assert not limiter.blocked("10.0.0.1", now=161.0)
