"""Console sessions: a signed cookie made from an admin token, and CSRF tokens derived from it.

Logging in means pasting one of ``[admin] tokens``. The session cookie then says which token
it came from (a fingerprint, never the token), when it expires, and a random nonce, signed
with HMAC-SHA256 under a key derived from that token:

    v1.<token fingerprint>.<expires, unix s>.<nonce>.<mac>

- Nothing is stored server-side, so any admin process with the same tokens accepts the
  cookie (several behind a load balancer), and Postgres need not answer for a login.
- Removing a token from the configuration ends every session made with it; the others live
  on, so rotating tokens one at a time logs nobody else out.
- The CSRF token of a session is ``HMAC(key, "csrf." + nonce)``: one per session, checked in
  constant time on every POST (with the ``Origin`` header, when the browser sent one).
- Logout forgets the cookie in that browser; a copy of it would stay valid until it expires
  (``SESSION_TTL_S``) or its token is removed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.config import Secret

__all__ = ["COOKIE_NAME", "SESSION_TTL_S", "LoginLimiter", "Session", "Sessions"]

COOKIE_NAME = "payhook_console"
SESSION_TTL_S = 12 * 3600
_VERSION = "v1"
_KEY_LABEL = b"payhook console session v1"
_FINGERPRINT_LABEL = b"payhook console token fingerprint v1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def fingerprint(token: str) -> str:
    """Names a token in cookies and logs without revealing it (tokens are long and random)."""
    return hashlib.sha256(_FINGERPRINT_LABEL + token.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Session:
    token_fingerprint: str
    expires: int
    nonce: str
    csrf: str


class Sessions:
    """Makes and checks session cookies for the configured tokens."""

    def __init__(self, tokens: Sequence[Secret], ttl_s: int = SESSION_TTL_S) -> None:
        self._tokens = [t.reveal().encode() for t in tokens]
        self._keys = {
            fingerprint(t.reveal()): hmac.new(t.reveal().encode(), _KEY_LABEL, "sha256").digest()
            for t in tokens
        }
        self.ttl_s = ttl_s

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def login(self, given: str, now: float | None = None) -> str | None:
        """The cookie value for a session of the token ``given``, or None if it is not one."""
        raw = given.strip().encode()
        # Every token compared in constant time, without stopping at a match (rotation).
        matches = [hmac.compare_digest(raw, t) for t in self._tokens]
        if not raw or not any(matches):
            return None
        token = self._tokens[matches.index(True)].decode()
        fp = fingerprint(token)
        expires = int((time.time() if now is None else now) + self.ttl_s)
        payload = f"{_VERSION}.{fp}.{expires}.{secrets.token_urlsafe(16)}"
        return f"{payload}.{self._mac(fp, payload)}"

    def verify(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (absent, tampered, expired, token removed)."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 5 or parts[0] != _VERSION:
            return None
        _, fp, expires_text, nonce, mac = parts
        key = self._keys.get(fp)
        if key is None:
            return None
        payload = ".".join(parts[:4])
        if not hmac.compare_digest(mac.encode(), self._mac(fp, payload).encode()):
            return None
        try:
            expires = int(expires_text)
        except ValueError:
            return None
        if expires <= (time.time() if now is None else now):
            return None
        csrf = _b64(hmac.new(key, b"csrf." + nonce.encode(), "sha256").digest())
        return Session(fp, expires, nonce, csrf)

    def _mac(self, fp: str, payload: str) -> str:
        return _b64(hmac.new(self._keys[fp], payload.encode(), "sha256").digest())


def csrf_ok(session: Session, given: str | None) -> bool:
    if not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode())


class LoginLimiter:
    """At most ``limit`` failed logins per client address per ``window_s`` (this process).

    Tokens are long random secrets, so guessing is hopeless anyway; this keeps a script from
    filling the log.
    """

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        failures = self._failures.get(client)
        if failures is None:
            return False
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return False
        return len(failures) >= self.limit

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) > 10_000:  # bounded memory whatever the clients do
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(now)
