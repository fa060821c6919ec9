"""Pure parts of the webhook worker: signing, the retry plan, the breaker, small helpers."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from contracts.errors import DecodeError
from contracts.events import CloudEvent, decode_event
from workers.webhooks.breaker import CircuitBreaker
from workers.webhooks.commands import parse_since
from workers.webhooks.consumer import subscribed
from workers.webhooks.delivery import request_headers
from workers.webhooks.progress import Progress
from workers.webhooks.retry import Action, Outcome, Plan, parse_retry_after, plan_next
from workers.webhooks.signing import decode_secret, sign, signature_header
from workers.webhooks.table import render

from .helpers import new_secret

PAYSERA = (0.0, 3600.0, 10800.0, 86400.0)

# ------------------------------------------------------------------------------- signing


def test_signature_matches_the_reference_library() -> None:
    secret = new_secret()
    body = b'{"id":"evt","type":"payhook.payment.succeeded"}'
    ts = int(datetime.now(UTC).timestamp())
    ours = sign(decode_secret(secret), "evt_1", ts, body)
    theirs = Webhook(secret).sign("evt_1", datetime.fromtimestamp(ts, UTC), body.decode())
    assert ours == theirs


def test_headers_verify_with_either_secret_during_rotation() -> None:
    old, new = new_secret(), new_secret()
    event = CloudEvent("e1", "/payhook/paysera/main", "t", data={"amount": 1})
    payload = event.to_dict()
    body = event.canonical_json()
    ts = int(datetime.now(UTC).timestamp())
    headers = request_headers((decode_secret(new), decode_secret(old)), "e1", body, ts)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == payload
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_a_tampered_body_does_not_verify() -> None:
    secret = new_secret()
    ts = int(datetime.now(UTC).timestamp())
    headers = request_headers((decode_secret(secret),), "e1", b'{"a":1}', ts)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)


def test_secrets_with_and_without_prefix_and_padding() -> None:
    assert decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == decode_secret(
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )
    assert decode_secret("whsec_YWJj") == b"abc"
    assert decode_secret("whsec_YWI") == b"ab"  # unpadded base64
    for bad in ("whsec_", "whsec_not base64!", ""):
        with pytest.raises(ValueError, match="secret"):
            decode_secret(bad)
    with pytest.raises(ValueError, match="at least one"):
        signature_header((), "e", 1, b"")


def test_the_body_a_merchant_gets_is_independent_of_key_order() -> None:
    one = decode_event(
        b'{"specversion":"1.0","id":"e","type":"t","source":"s","data":{"b":1,"a":{"d":2,"c":3}}}'
    )
    other = decode_event(
        b'{"data":{"a":{"c":3,"d":2},"b":1},"source":"s","type":"t","id":"e","specversion":"1.0"}'
    )
    assert (
        one.canonical_json()
        == other.canonical_json()
        == (
            b'{"data":{"a":{"c":3,"d":2},"b":1},"id":"e","source":"s","specversion":"1.0","type":"t"}'
        )
    )


def test_an_event_read_back_re_encodes_to_the_same_document() -> None:
    """Extension attributes payhook does not name survive decoding (a replay or retry signs the
    bytes attempt 1 signed); a null attribute counts as absent (CloudEvents JSON format)."""
    doc = {
        "specversion": "1.0",
        "id": "e",
        "type": "t",
        "source": "s",
        "time": "2026-12-01T00:00:00Z",
        "traceparent": "00-abc-def-01",
        "data": {"amount": 1250, "currency": "EUR"},
    }
    event = decode_event(orjson.dumps(doc))
    assert event.extensions == {"traceparent": "00-abc-def-01"}
    assert event.to_dict() == doc
    assert decode_event(event.canonical_json()) == event
    assert decode_event(orjson.dumps({**doc, "subject": None})).to_dict() == doc


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"specversion": "0.3", "id": "e", "type": "t", "source": "s"}, "specversion"),
        ({"specversion": "1.0", "type": "t", "source": "s"}, "lacks id"),
        ({"specversion": "1.0", "id": "e", "type": "t", "source": ""}, "lacks source"),
        ({"specversion": "1.0", "id": "e", "type": "t", "source": "s", "time": 5}, "time"),
        ({"specversion": "1.0", "id": "e", "type": "t", "source": "s", "data": [1]}, "data"),
    ],
)
def test_an_event_with_a_bad_envelope_is_refused(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_event(orjson.dumps(doc))


# ------------------------------------------------------------------------------- retry plan


@pytest.mark.parametrize(
    ("attempt", "outcome", "retry_after", "expected"),
    [
        (1, Outcome.DELIVERED, None, Plan(Action.DONE)),
        (1, Outcome.GONE, None, Plan(Action.PARK)),
        (1, Outcome.FAILED, None, Plan(Action.RETRY, 3600.0, 2)),
        (2, Outcome.FAILED, None, Plan(Action.RETRY, 10800.0, 3)),
        (3, Outcome.FAILED, None, Plan(Action.RETRY, 86400.0, 4)),
        (4, Outcome.FAILED, None, Plan(Action.DEAD)),
        (9, Outcome.FAILED, None, Plan(Action.DEAD)),  # schedule shortened since: dead
        # Retry-After earlier than the next step: the schedule wins.
        (1, Outcome.FAILED, 60.0, Plan(Action.RETRY, 3600.0, 2)),
        # Later: the smallest step at least as long.
        (1, Outcome.FAILED, 7200.0, Plan(Action.RETRY, 10800.0, 2)),
        (1, Outcome.FAILED, 10800.0, Plan(Action.RETRY, 10800.0, 2)),
        # Beyond every step: capped at the longest.
        (1, Outcome.FAILED, 10 * 86400.0, Plan(Action.RETRY, 86400.0, 2)),
        # Retry-After on the last attempt changes nothing: dead is dead.
        (4, Outcome.FAILED, 60.0, Plan(Action.DEAD)),
    ],
)
def test_plan_on_paysera_schedule(
    attempt: int, outcome: Outcome, retry_after: float | None, expected: Plan
) -> None:
    assert plan_next(attempt, outcome, PAYSERA, retry_after) == expected


@given(
    schedule=st.lists(st.floats(0, 1e6), min_size=1, max_size=8),
    retry_after=st.none() | st.floats(0, 1e7),
)
def test_plans_never_exceed_the_schedule_and_use_only_its_steps(
    schedule: list[float], retry_after: float | None
) -> None:
    attempt, attempts = 1, 1
    while True:
        plan = plan_next(attempt, Outcome.FAILED, schedule, retry_after)
        if plan.action is Action.DEAD:
            break
        assert plan.action is Action.RETRY
        assert plan.next_attempt == attempt + 1
        assert plan.delay in {float(s) for s in schedule}  # a delay queue exists for it
        assert plan.delay >= schedule[attempt]
        attempt, attempts = attempt + 1, attempts + 1
    assert attempts == len(schedule)


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="from 1"):
        plan_next(0, Outcome.FAILED, PAYSERA)
    with pytest.raises(ValueError, match="at least one"):
        plan_next(1, Outcome.FAILED, ())


def test_retry_after_parsing() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Wed, 01 May 2024 12:05:00 GMT", now) == 300.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# ------------------------------------------------------------------------------- breaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 60.0, clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # resets the count: failures must be consecutive
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now = 59.9
    assert not breaker.allow()
    clock.now = 60.0
    assert breaker.state == "half_open"
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # others still skipped
    breaker.record_failure()  # trial failed: open again, for a fresh cool-down
    assert breaker.state == "open"
    clock.now = 120.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.allow()


def test_breaker_gives_back_an_abandoned_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    breaker.record_failure()
    clock.now = 10.0
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


# ------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (("*",), "payhook.payment.succeeded", True),
        (("payhook.payment.succeeded",), "payhook.payment.succeeded", True),
        (("payhook.payment.succeeded",), "payhook.payment.failed", False),
        (("payhook.payment.*",), "payhook.payment.refunded", True),
        (("payhook.payment.*",), "payhook.payout.succeeded", False),
        (("payhook.payout.*", "payhook.payment.failed"), "payhook.payment.failed", True),
        ((), "payhook.payment.succeeded", False),
    ],
)
def test_subscriptions(patterns: tuple[str, ...], event_type: str, expected: bool) -> None:
    assert subscribed(patterns, event_type) is expected


def test_since_accepts_ages_and_iso_times() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("3d", now) == now - timedelta(days=3)
    assert parse_since("2024-04-30T08:00") == datetime(2024, 4, 30, 8, 0, tzinfo=UTC)
    assert parse_since("2024-04-30T08:00+02:00").utcoffset() == timedelta(hours=2)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("yesterday")


def test_progress_prints_tenths_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(20, label="replay", stream=out)
    for _ in range(20):
        progress.update()
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[-1] == "replay [" + "#" * 30 + "] 20/20"
    assert len(lines) == 11  # 0/10 … 10/10


def test_table_aligns_columns() -> None:
    assert render(["A", "BB"], [["xyz", "1"], ["", "22"]]) == "A    BB\nxyz  1\n     22"
