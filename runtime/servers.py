"""Server URLs: a node list, a server's name for logs, and passwords kept out of sight.

A log line names the server it is about as ``host:port``; a URL that must be shown has its
password replaced. ``mask_urls`` is what the log redaction runs over every string, so a URL
that slipped into an exception message is masked too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from contracts.redact import mask_urls

__all__ = ["mask_urls", "server_name", "split_urls"]


def split_urls(value: str) -> list[str]:
    """``"amqp://a/,amqp://b/"`` → both URLs (the nodes of one cluster); blanks are dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def server_name(url: str) -> str:
    """``host:port`` of ``url``, never its credentials (``?`` where the URL does not parse)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host
