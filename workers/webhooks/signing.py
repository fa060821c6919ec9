"""Standard Webhooks signatures (HMAC-SHA256, ``v1``) for outgoing merchant requests.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` over the exact bytes sent.
Secrets are ``whsec_`` + base64 of the key bytes (the prefix is optional, as in the
reference libraries). During rotation a merchant holds several secrets; every one signs and
the signatures go space-separated in one header, so the merchant can verify with either the
old or the new secret while it switches over.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["SECRET_PREFIX", "decode_secret", "sign", "signature_header"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's marker, not a secret


def decode_secret(secret: str) -> bytes:
    """Key bytes of a ``whsec_…`` secret; raises ``ValueError`` on anything unusable."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Tolerate missing padding, as the reference libraries do.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("webhook secret is not base64 after the whsec_ prefix") from None
    if not key:
        # An empty key would "verify" anything an attacker cares to sign.
        raise ValueError("webhook secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64 HMAC-SHA256>`` signature."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per key, space-separated."""
    if not keys:
        raise ValueError("a merchant needs at least one webhook secret to sign with")
    return " ".join(sign(key, msg_id, timestamp, body) for key in keys)
