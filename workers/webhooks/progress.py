"""A small progress bar on stderr for bulk operator commands (no dependency needed).

Redrawn in place on a terminal, at most ten times a second; when stderr is not a terminal
(logs, CI) it prints one line per tenth of the work instead, so the output stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]

_WIDTH = 30
_MIN_REDRAW_S = 0.1


class Progress:
    def __init__(
        self, total: int, *, label: str, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.total = max(0, total)
        self.done = 0
        self.label = label
        self.enabled = enabled and total > 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._last_draw = 0.0
        self._last_tenth = -1

    def update(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        if not self.enabled:
            return
        if self._tty:
            now = time.monotonic()
            if now - self._last_draw >= _MIN_REDRAW_S or self.done == self.total:
                self._last_draw = now
                self._stream.write("\r" + self.render())
                self._stream.flush()
        else:
            tenth = self.done * 10 // self.total
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                self._stream.write(self.render() + "\n")
                self._stream.flush()

    def render(self) -> str:
        filled = _WIDTH * self.done // self.total if self.total else _WIDTH
        bar = "#" * filled + "." * (_WIDTH - filled)
        return f"{self.label} [{bar}] {self.done}/{self.total}"

    def close(self) -> None:
        if self.enabled and self._tty:
            self._stream.write("\n")
            self._stream.flush()
