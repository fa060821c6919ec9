"""The verdict of a chaos run: every guarantee checked against what was stored and seen.

``verify`` never raises for a broken guarantee: each one becomes a line of
``Report.problems`` (the test asserts there are none; the benchmark prints them), and
``Report.render`` adds the figures (throughput, ack latency, recovery after each fault,
duplicates).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from contracts.topology import Topology
from tests.chaos.load import Load, Planned
from tests.chaos.merchant import ChaosMerchant
from tests.chaos.processes import RoleExit
from tests.chaos.system import MERCHANT, WEBHOOK_BUSY_DELAY_S, EventTap, run_command

if TYPE_CHECKING:
    from tests.chaos.harness import ChaosPlan, FaultRecord

__all__ = ["FaultFigures", "Report", "verify", "wait_drained"]

_LISTED = 15  # problems listed per kind; the count is always complete
# Log lines that mean a bug or a role dying, whatever else happened.
BAD_LOG_MARKERS = (
    "payhook.role_crashed",
    "payhook.role_exited",
    "payhook.shutdown_timed_out",
    "payhook.forced_exit",
    "payhook.config_error",
    "ledger.batch_crashed",
    # Genuine callbacks only: a batch that failed, or a message failed or dead-lettered, is
    # a bug or an outage taken for the message's fault.
    "ledger.batch_failed",
    "ledger.message_failed",
    "ledger.poison_message",
    "runtime.message_failed",
    "runtime.message_dead_lettered",
    "webhooks.undecodable",
    "webhooks.failed",
    "Task exception was never retrieved",
    "Traceback (most recent call last)",
    '"level":"critical"',
)


@dataclass(frozen=True, slots=True)
class FaultFigures:
    name: str
    back_s: float  # fault → the role restarted (spawned), or the server restart returned
    ready_s: float | None  # fault → the role's (or every role's) /readyz 200 again
    # fault → the first ack after the last failed answer; None: no answer failed
    acks_resumed_s: float | None
    failed_answers: int  # non-ack answers (503, connection errors) while it lasted
    dispatched: int  # callbacks first sent while it lasted: load was flowing
    error: str | None


@dataclass
class Report:
    callbacks: int = 0
    acked: int = 0
    requests: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    load_s: float = 0.0
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    faults: list[FaultFigures] = field(default_factory=list)
    merchant: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    ledger_check: tuple[int | None, str] = (None, "")
    queues: dict[str, int | None] = field(default_factory=dict)
    exits: list[RoleExit] = field(default_factory=list)
    log_lines: dict[str, int] = field(default_factory=dict)  # error/warning events, counted
    released: int = 0
    drain_s: float | None = None  # load finished → everything in the ledger, published, delivered
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        lat = self.latency_ms
        out = [
            f"callbacks: {self.callbacks} planned, {self.acked} acknowledged; "
            f"{self.requests} requests ({_counts(self.answers)})",
            f"throughput: {self.throughput:.0f} callbacks/s acknowledged over {self.load_s:.1f} s",
            f"ack latency: p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms, "
            f"max {lat.get('max', 0):.1f} ms",
            "faults (time from the fault):",
        ]
        for f in self.faults:
            ready = f"{f.ready_s:.1f} s" if f.ready_s is not None else "never"
            acks = (
                f"{f.acks_resumed_s:.2f} s after {f.failed_answers} failed answers"
                if f.acks_resumed_s is not None
                else "never interrupted"
            )
            error = f"; ERROR {f.error}" if f.error else ""
            back = f"server back {f.back_s:.1f} s, " if f.name.startswith("restart") else ""
            out.append(
                f"  {f.name:<18} {back}ready again {ready}; acks resumed {acks}; "
                f"{f.dispatched} callbacks sent meanwhile{error}"
            )
        if self.drain_s is not None:
            out.append(
                f"drained {self.drain_s:.1f} s after the load ended (ledger, events, webhooks)"
            )
        m, e = self.merchant, self.events
        queues = {k: v if v is not None else -1 for k, v in self.queues.items()}
        out += [
            f"merchant: {m.get('attempts', 0)} attempts, {m.get('failed_on_purpose', 0)} answered "
            f"500 on purpose, {m.get('delivered', 0)} event ids delivered, "
            f"{m.get('duplicates', 0)} duplicate deliveries, {m.get('bad_signatures', 0)} bad "
            "signatures",
            f"event queue: {e.get('messages', 0)} messages, {e.get('distinct', 0)} distinct ids, "
            f"{e.get('duplicates', 0)} duplicates; events table: {e.get('rows', 0)} rows",
            f"paysepro: {self.released} held callbacks released by order registrations",
            f"payhook ledger check: exit {self.ledger_check[0]}: {self.ledger_check[1].strip()}",
            f"queues at the end (messages): {_counts(queues)}",
            "final SIGTERM: "
            + ", ".join(f"{x.name} exit {x.code} in {x.seconds:.1f} s" for x in self.exits),
            "log lines at warning or above: " + (_counts(self.log_lines) or "none"),
            f"problems: {len(self.problems)}",
            *(f"  - {p}" for p in self.problems),
        ]
        return "\n".join(out)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _listed(problems: list[str], kind: str, items: Sequence[str]) -> None:
    for item in items[:_LISTED]:
        problems.append(f"{kind}: {item}")
    if len(items) > _LISTED:
        problems.append(f"{kind}: … and {len(items) - _LISTED} more")


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


async def wait_drained(
    database_url: str, merchant: ChaosMerchant, load: Load, within: float
) -> bool:
    """Poll until every acknowledged callback moved its money, every event was published
    and every one reached the merchant; False if that did not happen ``within`` seconds."""
    expected = len(load.acked())
    deadline = time.monotonic() + within
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        while time.monotonic() < deadline:
            row = await conn.fetchrow(_DRAIN)
            assert row is not None
            delivered = merchant.delivered()
            # Counts first; the ids only once they add up (cheap at 100,000 events).
            if (
                row["succeeded"] >= expected
                and not row["unpublished"]
                and not row["undelivered"]
                and row["events"] <= len(delivered)
            ):
                ids = {r["id"] for r in await conn.fetch("SELECT id FROM events")}
                if ids <= delivered:
                    return True
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    return False


_DRAIN = """
SELECT (SELECT count(*) FROM payments WHERE state = 'succeeded') AS succeeded,
       (SELECT count(*) FROM events WHERE published_at IS NULL) AS unpublished,
       (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered') AS undelivered
"""
_PAYMENTS = """
SELECT p.provider, p.account, p.transaction_id, p.state, p.paid, p.currency, p.attention,
       (SELECT count(*) FROM journal_entries e WHERE e.payment_id = p.id) AS entries,
       (SELECT count(*) FROM callbacks c WHERE c.payment_id = p.id
         AND c.outcome = 'applied') AS applied
FROM payments p
"""


def _check_ledger(
    problems: list[str], planned: Sequence[Planned], acked: set[int], rows: Sequence[Any]
) -> dict[str, int]:
    """Each acknowledged callback in the ledger exactly once, with its amount; the expected
    merchant balance per currency (from the payments that succeeded)."""
    by_key = {(r["provider"], r["account"], r["transaction_id"]): r for r in rows}
    missing: list[str] = []
    wrong: list[str] = []
    twice: list[str] = []
    unacked_wrong: list[str] = []
    balance: dict[str, int] = defaultdict(int)
    for p in planned:
        row = by_key.pop(p.key, None)
        if row is None:
            if p.index in acked:
                missing.append(f"{p.provider} {p.transaction_id} ({p.amount} {p.currency})")
            continue
        if row["entries"] > 1 or row["applied"] > 1:
            twice.append(
                f"{p.provider} {p.transaction_id}: {row['entries']} journal entries, "
                f"{row['applied']} applied callbacks"
            )
        if row["state"] == "succeeded":
            balance[p.currency] += p.minor
        got = (row["state"], row["paid"], row["currency"], row["entries"], row["attention"])
        want = ("succeeded", p.minor, p.currency, 1, None)
        if got != want:
            (wrong if p.index in acked else unacked_wrong).append(
                f"{p.provider} {p.transaction_id}: (state, paid, currency, entries, attention) "
                f"= {got}, expected {want}"
            )
    _listed(problems, "acknowledged callback missing from the ledger", missing)
    _listed(problems, "posted more than once", twice)
    _listed(problems, "acknowledged callback wrong in the ledger", wrong)
    _listed(problems, "callback never acknowledged and wrong in the ledger", unacked_wrong)
    _listed(
        problems,
        "payment nobody sent",
        [f"{k[0]} {k[2]}" for k in by_key],
    )
    return dict(balance)


async def _ledger_check(env: Mapping[str, str]) -> tuple[int | None, str]:
    argv = [sys.executable, "-m", "payhook", "ledger", "check"]
    code, output = await run_command(argv, env, patience=300)
    return code, output if code is not None else output + "(timed out)"


def scan_logs(logs: Sequence[Path], secrets: Sequence[str], problems: list[str]) -> dict[str, int]:
    """Secrets and bug markers in any role's output; warning+ events counted by name."""
    counted: Counter[str] = Counter()
    leaks: list[str] = []
    bad: list[str] = []
    for path in logs:
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except OSError as exc:
            problems.append(f"cannot read {path.name}: {exc}")
            continue
        with handle:
            for number, line in enumerate(handle, 1):
                for n, secret in enumerate(secrets):
                    if secret in line:
                        # Never print the secret itself: say which one and where.
                        leaks.append(f"{path.name}:{number}: secret #{n + 1} of the URLs")
                if any(marker in line for marker in BAD_LOG_MARKERS):
                    bad.append(f"{path.name}:{number}: {line.strip()[:400]}")
                if '"level":"' in line and '"level":"info"' not in line:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict):
                        counted[f"{entry.get('level')} {entry.get('event')}"[:80]] += 1
    _listed(problems, "a password in the logs", leaks)
    _listed(problems, "bug in the logs", bad)
    return dict(counted)


def _fault_figures(load: Load, record: FaultRecord) -> FaultFigures:
    end = record.ready if record.ready is not None else time.monotonic()
    window = [a for a in load.answers if record.started <= a.answered <= end]
    failed = [a for a in window if not a.acked]
    resumed = None
    if failed:
        last_fail = max(a.answered for a in failed)
        later = [a.answered for a in load.answers if a.acked and a.answered >= last_fail]
        resumed = (min(later) - record.started) if later else None
    dispatched = sum(1 for t in load.dispatch_times if record.started <= t <= end)
    return FaultFigures(
        record.name,
        max(0.0, record.done - record.started),
        (record.ready - record.started) if record.ready is not None else None,
        resumed if failed else None,
        len(failed),
        dispatched,
        record.error,
    )


async def verify(
    *,
    plan: ChaosPlan,
    database_url: str,
    env: Mapping[str, str],
    namespace: str,
    tap: EventTap,
    tap_ids: Sequence[str],
    load: Load,
    merchant: ChaosMerchant,
    registrar_problems: Sequence[str],
    faults: Sequence[FaultRecord],
    exits: Sequence[RoleExit],
    logs: Sequence[Path],
    secrets: Sequence[str],
) -> Report:
    report = Report(callbacks=len(load.planned))
    problems = report.problems
    acked = {p.index for p in load.acked()}
    report.acked = len(acked)

    # -- the providers' side ----------------------------------------------------------------
    report.requests = len(load.answers)
    report.answers = dict(
        Counter(
            "ack" if a.acked else ("no answer" if a.status is None else str(a.status))
            for a in load.answers
        )
    )
    refused = [f"{p.provider} {p.transaction_id}: {o}" for p in load.planned
               for o in load.outcomes[p.index].refused]  # fmt: skip
    _listed(problems, "genuine callback refused", refused)
    _listed(
        problems,
        "callback never acknowledged",
        [f"{p.provider} {p.transaction_id}" for p in load.planned if p.index not in acked],
    )
    ack_times = [a.answered for a in load.answers if a.acked]
    if ack_times:
        first_acks = [load.outcomes[i].acked_at or 0.0 for i in acked]
        report.load_s = max(first_acks) - load.started_at
        report.throughput = len(acked) / report.load_s if report.load_s > 0 else 0.0
    latencies = sorted((a.answered - a.sent) * 1000 for a in load.answers if a.acked)
    report.latency_ms = {
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "max": latencies[-1] if latencies else 0.0,
    }
    for record in faults:
        figures = _fault_figures(load, record)
        report.faults.append(figures)
        if figures.error:
            problems.append(f"fault {record.name}: {figures.error}")
        elif figures.dispatched == 0:
            problems.append(f"fault {record.name}: no load was flowing while it lasted")
    if len(faults) < len(plan.faults):
        problems.append(f"only {len(faults)} of {len(plan.faults)} faults were carried out")
    _listed(problems, "order registration", list(registrar_problems))

    # -- the ledger -----------------------------------------------------------------------
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(_PAYMENTS)
        expected_balance = _check_ledger(problems, load.planned, acked, rows)
        balance = {
            r["currency"]: -int(r["total"])
            for r in await conn.fetch(
                "SELECT currency, sum(amount) AS total FROM postings WHERE account = $1"
                " GROUP BY currency",
                f"merchant_balance:{MERCHANT}",
            )
        }
        if balance != expected_balance:
            problems.append(
                f"merchant balance {balance} differs from the payments' sum {expected_balance}"
            )
        events = await conn.fetch("SELECT id, type, published_at, merchant FROM events")
        deliveries = await conn.fetch(
            "SELECT event_id, state, attempts FROM webhook_deliveries WHERE state <> 'delivered'"
        )
    finally:
        await conn.close()
    report.ledger_check = await _ledger_check(env)
    if report.ledger_check[0] != 0:
        problems.append(f"payhook ledger check exited {report.ledger_check[0]}")

    # -- events and webhooks --------------------------------------------------------------
    event_ids = {r["id"] for r in events}
    succeeded_events = sum(1 for r in events if r["type"] == "payhook.payment.succeeded")
    succeeded_payments = sum(1 for r in rows if r["state"] == "succeeded")
    if succeeded_events != succeeded_payments:
        problems.append(
            f"{succeeded_events} payment.succeeded events for {succeeded_payments} payments"
        )
    _listed(problems, "event never published", [r["id"] for r in events if not r["published_at"]])
    distinct = set(tap_ids)
    report.events = {
        "rows": len(events),
        "messages": len(tap_ids),
        "distinct": len(distinct),
        "duplicates": len(tap_ids) - len(distinct),
    }
    _listed(problems, "event missing from the event queue", sorted(event_ids - distinct))
    _listed(problems, "event queue message not in the events table", sorted(distinct - event_ids))
    for_merchant = {r["id"] for r in events if r["merchant"] == MERCHANT}
    delivered = merchant.delivered()
    report.merchant = {
        "attempts": merchant.attempts(),
        "failed_on_purpose": sum(s.count(500) for s in merchant.answers.values()),
        "delivered": len(delivered),
        "duplicates": merchant.duplicates(),
        "bad_signatures": len(merchant.bad_signatures),
    }
    _listed(problems, "webhook never delivered", sorted(for_merchant - delivered))
    _listed(problems, "webhook with a bad signature", merchant.bad_signatures)
    _listed(problems, "webhook-id differs from the event id", merchant.id_mismatches)
    _listed(problems, "webhook delivered but not an event", sorted(delivered - event_ids))
    _listed(
        problems,
        "delivery not marked delivered",
        [f"{r['event_id']} {r['state']} after {r['attempts']} attempts" for r in deliveries],
    )

    # -- queues ---------------------------------------------------------------------------
    topology = Topology(namespace)
    dead = [topology.ledger_dead_queue, topology.webhooks_dead_queue, topology.orders_dead_queue]
    work = [topology.ledger_queue, topology.webhooks_queue, topology.orders_queue, tap.queue]
    delays = sorted({d for d in (*plan.webhook_schedule, WEBHOOK_BUSY_DELAY_S) if d > 0})
    work += [topology.webhooks_retry_queue(d) for d in delays]
    report.queues = await tap.depths([*dead, *work])
    for name in dead + work:
        depth = report.queues.get(name)
        if depth is None:
            problems.append(f"queue {name} does not exist")
        elif depth:
            problems.append(f"queue {name} holds {depth} messages at the end")

    # -- processes and their logs ---------------------------------------------------------
    report.exits = list(exits)
    limit = plan.shutdown_grace_s + 5
    for x in exits:
        if x.code != 0 or x.seconds > limit:
            problems.append(
                f"{x.name} on SIGTERM: exit code {x.code} after {x.seconds:.1f} s "
                f"(wanted 0 within {limit:g} s)"
            )
    report.log_lines = scan_logs(logs, secrets, problems)
    return report
