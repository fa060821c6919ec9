"""``python -m workers.ledger``: the ledger worker alone, until SIGTERM or SIGINT.

For tests and small deployments that do not go through the ``payhook`` command: settings
from ``PAYHOOK_*`` variables, accounts from ``PAYHOOK_CONFIG_PATH``.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import orjson
import structlog

from contracts.config import Settings, load_config
from workers.ledger.consumer import run_ledger_worker


async def _main() -> None:
    settings = Settings.from_env()
    config = load_config(settings.config_path)
    level = logging.getLevelName(settings.log_level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        logger_factory=structlog.BytesLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            level if isinstance(level, int) else logging.INFO
        ),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_ledger_worker(settings, config, stop)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # optional: the stdlib loop works, just slower
        asyncio.run(_main())
    else:
        uvloop.run(_main())
