"""Deterministic ids: ``uuid5`` as text, computed without building ``uuid.UUID`` objects.

Callback, event and payment ids are derived from their content so that a resend maps to the
same id. They are computed several times per callback on the hot paths (ingress, ledger), and
``str(uuid.uuid5(...))`` spends most of its time constructing and formatting the object; this
gives the same text (tests compare it with ``uuid.uuid5``) at about a third of the cost.
"""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["uuid5_text"]


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"
