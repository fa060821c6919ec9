"""Passwords inside URLs, masked: what logs, reprs and error messages show of a URL.

Pure text work, shared by the settings' ``repr`` and the log redaction (``payhook.logging``),
so a URL that slipped into any string is masked the same way everywhere.
"""

from __future__ import annotations

import re

__all__ = ["mask_urls"]

# scheme://user:password@ : the password is what stands between the ':' after the user and
# the '@' before the host.
_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s/:@]*:)([^\s@/]*)@")


def mask_urls(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password replaced by ``***``."""
    if "://" not in text:
        return text
    return _CREDENTIALS.sub(r"\1***@", text)
