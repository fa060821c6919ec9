"""Play a provider: build its callback, send it, print both sides, resend like it would.

``payhook simulate`` (``ingress.simulate_command``) and the tests use this to drive a running
ingress exactly the way the real provider does, including its retry schedule when the answer is
not the provider's acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TextIO

import aiohttp
import yarl

from contracts.callbacks import RawRequest
from contracts.config import ProviderAccount
from ingress.providers.base import (
    Ack,
    ProviderModule,
    SimulatedPayment,
    SimulatedRequest,
)

__all__ = ["is_ack", "simulate_and_send", "to_raw_request"]

_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)
_PRINT_LIMIT = 4096


def is_ack(expected: Ack | None, status: int, body: bytes) -> bool:
    """Whether the provider would stop resending on this answer."""
    if expected is None:
        return status == 200
    return status == expected.status and body.strip() == expected.body.strip()


def to_raw_request(
    provider: ProviderModule, request: SimulatedRequest, *, path: str, remote: str
) -> RawRequest:
    """The ``RawRequest`` the ingress would build from ``request`` (tests verify it directly)."""
    wanted = {h.lower(): h for h in provider.relevant_headers}
    return RawRequest(
        method=request.method,
        path=path,
        query_string=request.query_string,
        body=request.body,
        headers={wanted[k.lower()]: v for k, v in request.headers.items() if k.lower() in wanted},
        remote=remote,
    )


def _print_message(out: TextIO, first_line: str, headers: Mapping[str, str], body: bytes) -> None:
    out.write(first_line + "\n")
    for name, value in headers.items():
        out.write(f"{name}: {value}\n")
    out.write("\n")
    if body:
        text = body[:_PRINT_LIMIT].decode("utf-8", errors="replace")
        out.write(text + ("\n…" if len(body) > _PRINT_LIMIT else "") + "\n")
    out.flush()


async def simulate_and_send(
    account: ProviderAccount,
    provider: ProviderModule,
    payment: SimulatedPayment,
    url: str,
    *,
    retries: bool,
    time_scale: float,
    out: TextIO,
) -> int:
    """Send ``payment`` to ``url`` as ``provider`` would; 0 once acknowledged, else 1.

    With ``retries`` every answer that is not the provider's ack (or no answer at all) is
    followed by a resend after the provider's next delay times ``time_scale``.
    """
    request = provider.simulate(account, payment)
    schedule = request.retry_schedule if retries else ()
    target = url + ("?" + request.query_string if request.query_string else "")
    # encoded=True: the query goes out byte for byte as built; signatures cover those bytes.
    target_url = yarl.URL(target, encoded=True)
    attempts = len(schedule) + 1
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        for attempt in range(attempts):
            if attempt:
                delay = schedule[attempt - 1] * time_scale
                out.write(f"# not acknowledged; attempt {attempt + 1}/{attempts} in {delay:g} s\n")
                await asyncio.sleep(delay)
            line = (
                f"> {request.method} {target_url.raw_path_qs} ({target_url.host_port_subcomponent})"
            )
            _print_message(out, line, request.headers, request.body)
            try:
                async with session.request(
                    request.method,
                    target_url,
                    data=request.body or None,
                    headers=dict(request.headers),
                ) as response:
                    answer = await response.read()
                    status = response.status
                    _print_message(
                        out, f"< {status} {response.reason or ''}", response.headers, answer
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.write(f"# no answer: {exc.__class__.__name__}: {exc}\n")
                continue
            if is_ack(request.expected_ack, status, answer):
                out.write("# acknowledged\n")
                out.flush()
                return 0
    out.write("# never acknowledged\n")
    out.flush()
    return 1
