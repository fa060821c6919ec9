"""Times an operator types: an ISO 8601 time (UTC unless it says otherwise) or an age.

``2024-05-01T12:00``, ``2024-05-01T12:00+02:00``, or ``90s``, ``15m``, ``2h``, ``3d`` ago.
Shared by the ``payhook`` commands (argparse ``type=``) and the console's filters.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

__all__ = ["parse_since"]

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    match = _AGE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _AGE_UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor an age like 2h"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
