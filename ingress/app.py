"""``create_app()`` and ``run_ingress()``: the aiohttp application and its lifetime.

The ingress listens from the start, whatever the broker's state: while no node answers,
callbacks get 503 (the provider resends) and ``/readyz`` says why. On stop it closes the
listening socket, lets requests in flight finish (each awaits its confirm) within the grace,
then closes the broker connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import structlog
from aiohttp import web

from contracts.config import Config, Settings
from contracts.errors import ConfigError
from contracts.topology import Topology
from ingress.broker import CallbackPublisher
from ingress.handlers import handle_callback, healthz, readyz
from ingress.metrics import IngressMetrics
from ingress.providers import PROVIDERS
from ingress.providers.base import ProviderModule
from ingress.state import STATE, IngressState
from runtime.health import Dependency
from runtime.process import RoleContext

__all__ = ["create_app", "run_ingress"]

log = structlog.get_logger("ingress")


def create_app(
    settings: Settings,
    config: Config,
    providers: Mapping[str, ProviderModule] | None = None,
    broker: Dependency | None = None,
) -> web.Application:
    modules = providers if providers is not None else PROVIDERS
    for (provider, _name), account in config.accounts.items():
        module = modules.get(provider)
        if module is None:
            raise ConfigError(f"providers.{provider}: no such provider module")
        module.check_account(account)
    publisher = CallbackPublisher(
        settings.amqp_url,
        Topology(settings.amqp_namespace),
        timeout_s=settings.publish_timeout_s,
        max_batch=settings.publish_max_batch,
        linger_s=settings.publish_linger_ms / 1000,
        dependency=broker,
        metrics=settings.metrics,
    )
    app = web.Application(client_max_size=settings.max_body_bytes)
    metrics = IngressMetrics() if settings.metrics else None
    if metrics is not None:
        metrics.start_at_zero(config.accounts)
    app[STATE] = IngressState(
        config=config, providers=modules, publisher=publisher, metrics=metrics
    )

    async def publisher_ctx(_: web.Application) -> AsyncIterator[None]:
        await publisher.start()
        yield
        await publisher.close()

    app.cleanup_ctx.append(publisher_ctx)
    app.router.add_route("GET", "/callbacks/{provider}/{account}", handle_callback)
    app.router.add_route("POST", "/callbacks/{provider}/{account}", handle_callback)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def run_ingress(ctx: RoleContext) -> None:
    """Serve until ``ctx.stop``, then stop accepting and let in-flight requests finish."""
    settings = ctx.settings
    app = create_app(settings, ctx.config, broker=ctx.dependency("rabbitmq"))
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.shutdown_grace_s, handle_signals=False
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.listen_host,
            settings.listen_port,
            backlog=1024,
            reuse_port=settings.listen_reuse_port or None,
        )
        await site.start()
        log.info("ingress.listening", host=settings.listen_host, port=settings.listen_port)
        await ctx.stop.wait()
    finally:
        await runner.cleanup()
        log.info("ingress.stopped")
