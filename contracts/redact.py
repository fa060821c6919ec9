"""What logs and operator pages never show: passwords in URLs, secret and payer fields.

Pure text work, shared by the settings' ``repr``, the log redaction (``payhook.logging``) and
the operator console (``workers.console``), so a secret is recognized the same way everywhere.

- ``mask_urls``: the password of every ``scheme://user:password@`` in a string.
- ``SENSITIVE_KEYS``: field names whose value is a secret or payer data, exactly as the log
  redaction matches them (a log field named ``email`` is never written).
- ``sensitive_key``: the broader rule for documents from outside (a provider's raw request):
  the name is normalized (case, ``-``, an ``x-`` header prefix) and matches when it, or any
  ``_``-separated part of it, is sensitive (``X-Signature``, ``p_email``, ``payer_phone``).
"""

from __future__ import annotations

import re

__all__ = ["SENSITIVE_KEYS", "mask_emails", "mask_urls", "sensitive_key"]

# scheme://user:password@ : the password is what stands between the ':' after the user and
# the '@' before the host.
_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@]*:)([^\s@/]*)@")
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")

SENSITIVE_KEYS = frozenset(
    {
        "password",
        "secret",
        "secrets",
        "token",
        "key",
        "api_key",
        "authorization",
        "ss1",
        "ss2",
        "ss3",
        "sign",
        "signature",
        "data",
        "body",
        "raw",
        "query",
        "email",
        "p_email",
        "name",
        "surname",
        "surename",
        "phone",
        "from",
        "sender",
    }
)

# Parts of a field name that make it sensitive wherever they appear (``payer_email``,
# ``X-Pg-Sig``, ``p_firstname``). Broader than SENSITIVE_KEYS: a raw request's field names
# are the provider's, not ours.
_SENSITIVE_PARTS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "authorization",
        "cookie",
        "ss1",
        "ss2",
        "ss3",
        "sign",
        "sig",
        "signature",
        "hash",
        "hmac",
        "email",
        "mail",
        "name",
        "firstname",
        "lastname",
        "surname",
        "surename",
        "phone",
        "mobile",
        "msisdn",
        "tel",
        "street",
        "address",
        "city",
        "zip",
        "postcode",
        "birthdate",
        "iban",
        "card",
        "pan",
        "cvv",
        "from",
        "sender",
    }
)


def mask_urls(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password replaced by ``***``."""
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(r"\1***@", text)


def mask_emails(text: str) -> str:
    """Every e-mail address in ``text`` replaced by ``***@***``."""
    if "@" not in text:
        return text
    return _EMAIL.sub("***@***", text)


def sensitive_key(name: str) -> bool:
    """Whether a field called ``name`` (any case, header or form style) holds a secret or PII."""
    key = name.strip().lower().replace("-", "_")
    key = key.removeprefix("x_")
    if key in SENSITIVE_KEYS:
        return True
    parts = [p for p in re.split(r"[_.\s\[\]]+", key) if p]
    # Paysera's payer fields are p_<something> (p_firstname, p_street, p_countrycode …).
    if len(parts) > 1 and parts[0] == "p":
        return True
    return any(part in _SENSITIVE_PARTS for part in parts)
