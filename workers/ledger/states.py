"""The payment state machine, as data (pure: no I/O).

A payment row is one (provider, account, transaction id). Its ``state`` starts at ``new`` (a
row exists, but no callback has moved it yet: only ``info``, ``unrecognized`` or held
callbacks so far) and moves forward only, along ``TRANSITIONS``.

Why ranks and branches, not just a graph: callbacks arrive out of order, duplicated, and are
applied by several workers at once, so the ledger must end in the same state whatever the
order of one payment's genuine history. Every state has a rank and belongs to a branch:

- open:    new (0), pending (1)
- unpaid:  failed, expired, cancelled (2) - terminal, never left
- paid:    partially_paid (3), succeeded (4), refund_pending (5), refund_failed (6),
           partially_refunded (7), refunded (8)

``TRANSITIONS`` allows exactly the moves to a higher rank that stay on one branch (open may
enter either). So a coherent history (one branch) ends in its highest state in any order. A
fact of lower rank on the paid branch (``succeeded`` arriving after ``refunded``) is *late*:
the state stays, but the money it reports still counts, so money converges too
(``postings.py``). Anything else is history only: *stale* (``pending`` after ``succeeded``) or a
*conflict* between branches (``succeeded`` after ``failed``), which is flagged for an operator.

Terminal states (``TERMINAL``) are left only into refund states (``REFUND_STATES``). ``info``
never changes state; ``amount_mismatch`` and ``unrecognized`` are ledger verdicts, not states.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from contracts.statuses import Kind, Status

__all__ = [
    "NEW",
    "OPEN_STATES",
    "PAID_STATES",
    "RANK",
    "REFUND_STATES",
    "STATES",
    "TERMINAL",
    "TRANSITIONS",
    "UNPAID_STATES",
    "Move",
    "classify",
    "is_state",
]

NEW = "new"

OPEN_STATES = frozenset({NEW, Status.PENDING.value})
UNPAID_STATES = frozenset({Status.FAILED.value, Status.EXPIRED.value, Status.CANCELLED.value})
REFUND_STATES = frozenset(
    {
        Status.REFUND_PENDING.value,
        Status.REFUND_FAILED.value,
        Status.PARTIALLY_REFUNDED.value,
        Status.REFUNDED.value,
    }
)
PAID_STATES = frozenset({Status.PARTIALLY_PAID.value, Status.SUCCEEDED.value} | REFUND_STATES)
TERMINAL = frozenset({Status.SUCCEEDED.value, Status.REFUNDED.value} | UNPAID_STATES)

RANK: Mapping[str, int] = {
    NEW: 0,
    "pending": 1,
    "failed": 2,
    "expired": 2,
    "cancelled": 2,
    "partially_paid": 3,
    "succeeded": 4,
    "refund_pending": 5,
    "refund_failed": 6,
    "partially_refunded": 7,
    "refunded": 8,
}

_ENTER = (
    frozenset({"pending", "failed", "expired", "cancelled", "partially_paid", "succeeded"})
    | REFUND_STATES
)
_REFUNDS = REFUND_STATES

# Allowed moves per kind: state -> states it may move to. The one place the rules live.
# Payouts have no refund states: a returned payout is a new payout in the other direction.
TRANSITIONS: Mapping[Kind, Mapping[str, frozenset[str]]] = {
    Kind.PAYMENT: {
        NEW: _ENTER,
        "pending": _ENTER - {"pending"},
        "failed": frozenset(),
        "expired": frozenset(),
        "cancelled": frozenset(),
        "partially_paid": frozenset({"succeeded"}) | _REFUNDS,
        "succeeded": _REFUNDS,
        "refund_pending": frozenset({"refund_failed", "partially_refunded", "refunded"}),
        "refund_failed": frozenset({"partially_refunded", "refunded"}),
        "partially_refunded": frozenset({"refunded"}),
        "refunded": frozenset(),
    },
    Kind.PAYOUT: {
        NEW: frozenset(
            {"pending", "failed", "expired", "cancelled", "partially_paid", "succeeded"}
        ),
        "pending": frozenset({"failed", "expired", "cancelled", "partially_paid", "succeeded"}),
        "failed": frozenset(),
        "expired": frozenset(),
        "cancelled": frozenset(),
        "partially_paid": frozenset({"succeeded"}),
        "succeeded": frozenset(),
    },
}

STATES: Mapping[Kind, frozenset[str]] = {
    kind: frozenset(table) for kind, table in TRANSITIONS.items()
}


class Move(StrEnum):
    """What a normalized status does to a payment in a given state."""

    ADVANCE = "advance"  # the state moves to the reported status
    LATE = "late"  # paid branch, lower or equal rank: state stays, the money it reports counts
    STALE = "stale"  # lower rank, same branch, no money (pending after succeeded): history only
    CONFLICT = "conflict"  # other branch, or not a state of this kind: history only, flagged
    INFO = "info"  # informative: never changes state
    UNRECOGNIZED = "unrecognized"  # the provider module could not map it: recorded, no effect


def is_state(kind: Kind, state: str) -> bool:
    return state in STATES[kind]


def classify(kind: Kind, state: str, status: Status) -> Move:
    """How ``status`` reported for a ``kind`` payment currently in ``state`` is treated."""
    if status is Status.INFO:
        return Move.INFO
    if status in (Status.UNRECOGNIZED, Status.AMOUNT_MISMATCH):
        # amount_mismatch is the ledger's own verdict; a provider module never reports it.
        return Move.UNRECOGNIZED
    target = status.value
    if target not in STATES[kind]:
        return Move.CONFLICT
    if target in TRANSITIONS[kind][state]:
        return Move.ADVANCE
    if target in PAID_STATES:
        return Move.LATE if state in PAID_STATES else Move.CONFLICT
    if target in UNPAID_STATES and state in PAID_STATES:
        return Move.CONFLICT
    # pending after anything, or one unpaid terminal after another: nothing new to record.
    return Move.STALE
