"""Ports for tests: free ones for servers that bind them themselves, and refusing ones.

Binding port 0 and closing the socket again is how a test finds a free port, but the kernel
may give that same port to the next ``bind(0)``: a "port nothing listens on" was once handed
to a merchant server the same test started right after, and the refused connection the test
expected came back as that merchant's 307.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

__all__ = ["free_port", "refused_port"]

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port for a server to bind itself, never the same one twice in this test run."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections for as long as the block runs: held bound (so no
    server of this run can take it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        _HANDED_OUT.add(port)
        yield port
