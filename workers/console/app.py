"""The operator console: a sub-application of the admin listener under ``/console/``.

Server-rendered (Jinja2, autoescaped), one small vendored script (``static/console.js``) that
polls HTML fragments for the live parts. Everything but the login page and the static files
needs a session (``auth.py``); every POST needs the session's CSRF token and, when the browser
sent one, an ``Origin`` of this very host. Pages send a strict Content-Security-Policy (scripts
and styles from the console only), forbid framing and caching.

``register_console(admin_app, …)`` mounts it; the admin listener's bearer check leaves
``/console`` paths to it (``owns``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
import orjson
import structlog
from aiohttp import web
from multidict import MultiDictProxy

from contracts.config import Config, Settings
from contracts.errors import ContractError
from contracts.money import format_major
from contracts.redact import mask_urls
from contracts.topology import Topology
from runtime.errors import Unreachable, describe, is_broker_outage, is_database_outage
from workers.console.auth import COOKIE_NAME, LoginLimiter, Session, Sessions, csrf_ok
from workers.console.broker import BrokerProbe
from workers.console.jobs import Jobs
from workers.console.refs import PoolRef

__all__ = ["BASE", "STATE", "ConsoleState", "owns", "register_console", "render"]

log = structlog.get_logger(__name__)

BASE = "/console"
_HERE = Path(__file__).parent
_PUBLIC = (f"{BASE}/login", f"{BASE}/static/")

SESSION = web.RequestKey("console_session", Session)
FORM = web.RequestKey("console_form", MultiDictProxy)

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer, Chromium sends "Origin: null" on forms.
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class ConsoleState:
    pool_ref: PoolRef
    config: Config
    settings: Settings
    sessions: Sessions
    limiter: LoginLimiter
    templates: jinja2.Environment
    probe: BrokerProbe
    jobs: Jobs
    overview_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    overview_cache: tuple[float, dict[str, Any]] | None = None

    @property
    def topology(self) -> Topology:
        return Topology(self.settings.amqp_namespace)


STATE = web.AppKey("console_state", ConsoleState)
_MOUNTED = web.AppKey("console_mounted", bool)


def owns(request: web.Request) -> bool:
    """Whether the console (mounted on this app) authenticates this request itself."""
    if not request.app.get(_MOUNTED, False):
        return False
    return request.path == BASE or request.path.startswith(BASE + "/")


# ----------------------------------------------------------------------------- rendering


def _money(amount: int | None, currency: str | None) -> str:
    if amount is None:
        return "-"
    if currency is None:
        return str(amount)
    try:
        return f"{format_major(amount, currency)} {currency}"
    except ContractError:
        return f"{amount} {currency} (minor units)"


def _when(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return str(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))
    return str(value)


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return "in " + _span(-seconds)
    return _span(seconds) + " ago"


def _span(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _shown(value: Any) -> str:
    """A document's value in a table cell: JSON for structures, ``-`` for null."""
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        money=_money, when=_when, ago=_ago, span=_span, mask_urls=mask_urls, shown=_shown
    )
    env.globals.update(base=BASE, quote=lambda s: quote(str(s), safe=""))
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    state = request.app[STATE]
    session = request.get(SESSION)
    html = state.templates.get_template(template).render(
        csrf=session.csrf if session is not None else "",
        signed_in=session is not None,
        path=request.path,
        here=_here(request),
        notice=_notice(request),
        **context,
    )
    return web.Response(text=html, content_type="text/html", status=status)


def _here(request: web.Request) -> str:
    """This page's address without a notice: where an action on it sends the operator back."""
    query = [(k, v) for k, v in request.query.items() if k not in ("notice", "n")]
    return str(request.rel_url.with_query(query)) if query else request.path


_NOTICES = {
    "replayed": "Replayed {n} deliveries: attempt 1 of a fresh schedule is on its way.",
    "replay-missing": "Not replayed: the event is not in the events table.",
    "enabled": "Endpoint enabled. Parked deliveries stay parked until you replay them.",
    "disabled": "Endpoint disabled: {n} pending deliveries parked.",
    "moved": "Moved {n} dead letters back to their queue.",
    "logged-out": "Signed out.",
}


def _notice(request: web.Request) -> str | None:
    code = request.query.get("notice")
    if code not in _NOTICES:
        return None
    n = request.query.get("n", "")
    return _NOTICES[code].format(n=int(n) if n.isdigit() else "?")


# ---------------------------------------------------------------------------- middleware


def _same_origin(request: web.Request) -> bool:
    """A POST from a page of this console (browsers send Origin on POST; old ones may not)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await _checked(request, handler)
    except web.HTTPException as exc:
        exc.headers.update(_SECURITY_HEADERS)
        exc.headers["Cache-Control"] = "no-store"
        raise
    response.headers.update(_SECURITY_HEADERS)
    if not request.path.startswith(f"{BASE}/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    public = request.path.startswith(_PUBLIC)
    session = state.sessions.verify(request.cookies.get(COOKIE_NAME))
    if session is not None:
        request[SESSION] = session
    elif not public:
        if request.method == "GET" and not request.path.startswith(f"{BASE}/api/"):
            target = quote(request.path_qs, safe="/?=&")
            raise web.HTTPSeeOther(f"{BASE}/login?next={target}")
        return web.json_response({"error": "not signed in"}, status=401)
    if request.method == "POST":
        if not _same_origin(request):
            log.warning("console.cross_origin_refused", path=request.path, remote=request.remote)
            return _forbidden(request, "This request did not come from a console page.")
        form = await request.post()
        request[FORM] = form
        # The login form proves itself with the token; every other form needs the CSRF token.
        if not public and session is not None and not csrf_ok(session, _field(form, "csrf")):
            log.warning("console.csrf_refused", path=request.path, remote=request.remote)
            return _forbidden(request, "The form's security token is missing or wrong.")
    try:
        return await handler(request)
    except Exception as exc:
        if isinstance(exc, Unreachable):  # workers.amqp.connect: no broker node answered
            what = "RabbitMQ"
        elif is_database_outage(exc):
            what = "Postgres"
        elif is_broker_outage(exc):
            what = "RabbitMQ"
        else:
            raise
        log.warning("console.dependency_unavailable", path=request.path, reason=describe(exc))
        return render(
            request, "error.html", status=503, title=f"{what} unavailable", detail=describe(exc)
        )


def _field(form: MultiDictProxy[Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _forbidden(request: web.Request, why: str) -> web.Response:
    return render(request, "error.html", status=403, title="Refused", detail=why)


# ------------------------------------------------------------------------- login, logout


async def _login_page(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return render(
        request,
        "login.html",
        next=_safe_next(request.query.get("next")),
        error=None,
        enabled=state.sessions.enabled,
    )


def _safe_next(target: str | None) -> str:
    """Only a path of this console: never another site (an open redirect)."""
    if not target or not target.startswith(BASE + "/") or target.startswith("//"):
        return BASE + "/"
    if "\\" in target or urlsplit(target).netloc:
        return BASE + "/"
    return target


async def _login(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    form = request[FORM]
    client = request.remote or ""
    target = _safe_next(_field(form, "next"))
    if state.limiter.blocked(client):
        return render(
            request,
            "login.html",
            status=429,
            next=target,
            enabled=True,
            error="Too many failed attempts from your address; wait a minute.",
        )
    cookie = state.sessions.login(_field(form, "token") or "")
    if cookie is None:
        state.limiter.failed(client)
        log.warning("console.login_failed", remote=client)
        return render(
            request,
            "login.html",
            status=401,
            next=target,
            enabled=state.sessions.enabled,
            error="That is not one of the admin tokens.",
        )
    session = state.sessions.verify(cookie)
    assert session is not None
    log.info("console.login", remote=client, token_fingerprint=session.token_fingerprint)
    response = web.HTTPSeeOther(target)
    secure = state.config.admin_cookie_secure
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=state.sessions.ttl_s,
        path=BASE,
        httponly=True,
        samesite="Strict",
        secure=request.secure if secure is None else secure,
    )
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(f"{BASE}/login?notice=logged-out")
    response.del_cookie(COOKIE_NAME, path=BASE)
    raise response


# ------------------------------------------------------------------------------ mounting


def register_console(
    admin_app: web.Application, pool_ref: PoolRef, config: Config, settings: Settings
) -> web.Application:
    """Mount the console on the admin listener's app under ``/console/``."""
    from workers.console import views

    app = web.Application(middlewares=[_guard])
    state = ConsoleState(
        pool_ref=pool_ref,
        config=config,
        settings=settings,
        sessions=Sessions(config.admin_tokens),
        limiter=LoginLimiter(),
        templates=_templates(),
        probe=BrokerProbe(settings.amqp_url),
        jobs=Jobs(pool_ref, settings),
    )
    app[STATE] = state
    app.router.add_get("/login", _login_page)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_static("/static/", _HERE / "static", append_version=True)
    views.add_routes(app)

    async def shutdown(_: web.Application) -> None:
        await state.jobs.wait(settings.shutdown_grace_s)

    async def cleanup(_: web.Application) -> None:
        await state.probe.close()

    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    admin_app[_MOUNTED] = True
    admin_app.add_subapp(BASE + "/", app)

    async def to_console(_: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(BASE + "/")

    admin_app.router.add_get(BASE, to_console)
    return app
