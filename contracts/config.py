"""Configuration: process settings from the environment, accounts and merchants from TOML.

Parsed once in ``main()`` and passed down as frozen objects. Secrets are referenced, never
written inline: ``"env:NAME"`` reads an environment variable, ``"file:PATH"`` a file (relative
paths are relative to the config file). A list of references is a rotation: every listed
secret is valid, the first one is used for signing. ``Secret`` masks itself in ``repr`` so a
logged config never leaks one.

This module only parses: the caller (``payhook.config_files``) reads the TOML file, the
environment and the secret files and hands them in, so ``contracts`` does no I/O.

    [webhooks]
    schedule = [0, 3600, 10800, 86400]    # seconds: now, +1 h, +3 h, +24 h (Paysera's)

    [merchants.shop]
    webhook_url = "https://shop.example/payhook"
    secrets = ["env:SHOP_WEBHOOK_SECRET"]  # whsec_…

    [providers.paysera.main]               # route: /callbacks/paysera/main
    merchant = "shop"
    project_id = "123456"
    password = "env:PAYSERA_PASSWORD"
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from contracts.errors import ConfigError
from contracts.redact import mask_urls

__all__ = [
    "Config",
    "Merchant",
    "ProviderAccount",
    "ReadFile",
    "Secret",
    "Settings",
    "parse_config",
]

# Reads the secret file at a path (``file:`` references), raising ``OSError`` if it cannot.
ReadFile = Callable[[Path], str]
_NO_ENVIRONMENT: Mapping[str, str] = MappingProxyType({})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PAYSERA_RETRY_SCHEDULE: tuple[float, ...] = (0.0, 3600.0, 10800.0, 86400.0)


class Secret:
    """A secret value that never shows itself in ``repr``/``str`` (logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Process settings (environment variables ``PAYHOOK_*``); laptop defaults."""

    database_url: str = "postgresql://postgres@127.0.0.1:25432/payhook"
    # One URL, or the comma-separated nodes of one cluster (each connection fails over).
    amqp_url: str = "amqp://guest:guest@127.0.0.1:25672/"
    config_path: str = "deploy/payhook.toml"
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    # /healthz, /readyz (and /metrics) of the process, whatever roles it runs; 0: none.
    health_host: str = "127.0.0.1"
    health_port: int = 8082
    # Prometheus instrumentation and /metrics on the health port.
    metrics: bool = True
    log_level: str = "info"
    log_format: str = "json"  # or "console" for people at a terminal
    amqp_namespace: str = "payhook"
    max_body_bytes: int = 64 * 1024
    publish_timeout_s: float = 10.0
    publish_max_batch: int = 128  # callbacks per confirmed message at most
    # A small batch waits this long for company before it is sent (ingress/broker.py; 0: the
    # loop turn only): fewer, fuller messages at moderate rates, for as much ack latency.
    publish_linger_ms: float = 3.0
    # SO_REUSEPORT: several ``payhook ingress`` processes share the port (one per core).
    listen_reuse_port: bool = False
    ledger_prefetch: int = 1000
    ledger_batch_size: int = 500
    ledger_batch_wait_ms: float = 20.0
    # The ledger worker publishes each batch's events right after its commit (one process hop
    # less per callback); the relay then only sweeps what stayed unpublished (workers/outbox.py).
    # false: the ledger notifies the relay, which publishes everything.
    ledger_publishes_events: bool = True
    relay_batch_size: int = 500
    webhook_prefetch: int = 256
    # A delivery for an endpoint with 2 x max_in_flight already waiting or in flight goes
    # back to the broker for this long instead of holding one of the prefetched messages.
    webhook_busy_delay_s: float = 5.0
    # The overdue sweeper (workers/webhooks/sweeper.py): a pending delivery whose next attempt
    # is this late is published again straight to the webhooks queue, because its delay-queue
    # message may be held up by the broker (RabbitMQ 3.10 after a node loss); 0 turns it off.
    webhook_overdue_s: float = 15.0
    # How often the sweeper looks, and how long it leaves a delivery it re-published before
    # re-publishing it again (its copy may be waiting behind a backlog: no flood of copies).
    webhook_sweep_interval_s: float = 5.0
    webhook_overdue_recheck_s: float = 60.0
    shutdown_grace_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Settings from ``PAYHOOK_*`` variables of ``env`` (``os.environ`` in a process)."""
        defaults = cls()
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            key = f"PAYHOOK_{name.upper()}"
            if key not in env:
                continue
            default = getattr(defaults, name)
            raw = env[key]
            try:
                values[name] = _parse_bool(raw) if isinstance(default, bool) else type(default)(raw)
            except ValueError:
                kind = type(default).__name__
                raise ConfigError(f"{key}={raw!r} is not a valid {kind}") from None
        return cls(**values)

    def __post_init__(self) -> None:
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"PAYHOOK_LOG_LEVEL={self.log_level!r}: one of {', '.join(LOG_LEVELS)}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"PAYHOOK_LOG_FORMAT={self.log_format!r}: one of {', '.join(LOG_FORMATS)}"
            )
        if not [u for u in self.amqp_url.split(",") if u.strip()]:
            raise ConfigError("PAYHOOK_AMQP_URL is empty")
        for name in ("listen_port", "admin_port", "health_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"PAYHOOK_{name.upper()}={port}: not a TCP port")
        if self.shutdown_grace_s < 0:
            raise ConfigError("PAYHOOK_SHUTDOWN_GRACE_S must be >= 0")
        if self.webhook_overdue_s < 0:
            raise ConfigError("PAYHOOK_WEBHOOK_OVERDUE_S must be >= 0 (0: no sweeper)")
        if self.webhook_sweep_interval_s <= 0 or self.webhook_overdue_recheck_s <= 0:
            raise ConfigError(
                "PAYHOOK_WEBHOOK_SWEEP_INTERVAL_S and PAYHOOK_WEBHOOK_OVERDUE_RECHECK_S must be > 0"
            )

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug output: never with a URL's password.
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__dataclass_fields__)
        return mask_urls(f"Settings({fields})")

    @property
    def amqp_urls(self) -> list[str]:
        """The broker nodes, in the order given."""
        return [u.strip() for u in self.amqp_url.split(",") if u.strip()]


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "console")


def _parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    webhook_url: str
    secrets: tuple[Secret, ...]
    events: tuple[str, ...] = ("*",)  # event types, "payhook.payment.*" patterns, or "*"
    allow_private: bool = False  # deliver to loopback/private addresses (local runs, tests)
    timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    max_in_flight: int = 16
    enabled: bool = True
    # Circuit breaker: after this many consecutive failures, stop calling for the cool-down.
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ProviderAccount:
    """One provider account: its route is ``/callbacks/<provider>/<name>``.

    ``options`` is the raw TOML table; each provider module reads its own keys from it (a new
    provider needs no change here). ``secrets`` holds every key whose value was a secret
    reference, resolved.
    """

    provider: str
    name: str
    merchant: str | None
    allowed_ips: tuple[IPNetwork, ...]
    options: Mapping[str, Any]
    secrets: Mapping[str, tuple[Secret, ...]] = field(default_factory=dict)

    def secret(self, key: str) -> tuple[Secret, ...]:
        """Every valid secret under ``key`` (several during rotation); raises if absent."""
        where = f"providers.{self.provider}.{self.name}.{key}"
        if key in self.secrets:
            return self.secrets[key]
        if key in self.options:
            # Refuse inline secrets: they end up in repos, tickets and logs.
            raise ConfigError(f"{where}: secrets are given as 'env:NAME' or 'file:PATH'")
        raise ConfigError(f"{where} is required")

    def ip_allowed(self, address: str) -> bool:
        if not self.allowed_ips:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allowed_ips)


@dataclass(frozen=True, slots=True)
class Config:
    merchants: Mapping[str, Merchant]
    accounts: Mapping[tuple[str, str], ProviderAccount]
    trusted_proxies: tuple[IPNetwork, ...] = ()
    webhook_schedule: tuple[float, ...] = PAYSERA_RETRY_SCHEDULE
    ledger: Mapping[str, Any] = field(default_factory=dict)
    admin_tokens: tuple[Secret, ...] = ()
    # The console's session cookie: True/False force its Secure flag; None (``"auto"``) sets
    # it when the request came over https (behind a TLS-terminating proxy, say true).
    admin_cookie_secure: bool | None = None

    def account(self, provider: str, name: str) -> ProviderAccount | None:
        return self.accounts.get((provider, name))

    def merchant_for(self, provider: str, account: str) -> Merchant | None:
        acc = self.accounts.get((provider, account))
        if acc is None or acc.merchant is None:
            return None
        return self.merchants.get(acc.merchant)


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] = _NO_ENVIRONMENT,
    read_file: ReadFile | None = None,
) -> Config:
    """The ``Config`` that ``data`` (a parsed TOML document) describes. ``env:`` secrets come
    from ``environ``, ``file:`` ones through ``read_file`` (relative paths under ``base_dir``);
    a ``file:`` reference with no ``read_file`` is a ``ConfigError``."""
    env, base = environ, _Files(base_dir, read_file)

    merchants: dict[str, Merchant] = {}
    for merchant_id, table in dict(data.get("merchants", {})).items():
        where = f"merchants.{merchant_id}"
        _require(table, "webhook_url", where)
        # Only the keys given: the defaults live once, on the Merchant dataclass.
        options: dict[str, Any] = {
            key: kind(table[key]) for key, kind in _MERCHANT_OPTIONS.items() if key in table
        }
        if "events" in table:
            options["events"] = tuple(str(e) for e in table["events"])
        merchants[merchant_id] = Merchant(
            id=merchant_id,
            webhook_url=str(table["webhook_url"]),
            secrets=resolve_secrets(table.get("secrets", []), f"{where}.secrets", base, env),
            **options,
        )

    accounts: dict[tuple[str, str], ProviderAccount] = {}
    for provider, provider_accounts in dict(data.get("providers", {})).items():
        for name, table in dict(provider_accounts).items():
            where = f"providers.{provider}.{name}"
            merchant = table.get("merchant")
            if merchant is not None and merchant not in merchants:
                raise ConfigError(f"{where}.merchant names unknown merchant {merchant!r}")
            secrets = {
                key: resolve_secrets(value, f"{where}.{key}", base, env)
                for key, value in table.items()
                if _is_secret_ref(value)
            }
            accounts[(provider, name)] = ProviderAccount(
                provider=provider,
                name=name,
                merchant=merchant,
                allowed_ips=_networks(table.get("allowed_ips", []), f"{where}.allowed_ips"),
                options={k: v for k, v in table.items() if k not in secrets},
                secrets=secrets,
            )

    ingress = dict(data.get("ingress", {}))
    webhooks = dict(data.get("webhooks", {}))
    schedule = tuple(float(s) for s in webhooks.get("schedule", PAYSERA_RETRY_SCHEDULE))
    if not schedule or any(s < 0 for s in schedule):
        raise ConfigError("webhooks.schedule must be a non-empty list of delays >= 0")
    admin = dict(data.get("admin", {}))
    return Config(
        merchants=merchants,
        accounts=accounts,
        trusted_proxies=_networks(ingress.get("trusted_proxies", []), "ingress.trusted_proxies"),
        webhook_schedule=schedule,
        ledger=dict(data.get("ledger", {})),
        admin_tokens=resolve_secrets(admin.get("tokens", []), "admin.tokens", base, env),
        admin_cookie_secure=_auto_bool(admin.get("cookie_secure", "auto"), "admin.cookie_secure"),
    )


_MERCHANT_OPTIONS: dict[str, type] = {
    "allow_private": bool,
    "timeout_s": float,
    "connect_timeout_s": float,
    "max_in_flight": int,
    "enabled": bool,
    "breaker_threshold": int,
    "breaker_cooldown_s": float,
}


def _auto_bool(value: Any, where: str) -> bool | None:
    if isinstance(value, bool):
        return value
    if value == "auto":
        return None
    raise ConfigError(f'{where} must be true, false or "auto"')


def _is_secret_ref(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(("env:", "file:"))
    if isinstance(value, list) and value:
        return all(isinstance(v, str) and v.startswith(("env:", "file:")) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class _Files:
    """Where ``file:`` references are read from, and how."""

    base_dir: Path | None
    read: ReadFile | None


def resolve_secrets(
    refs: str | Sequence[str], where: str, files: _Files, env: Mapping[str, str]
) -> tuple[Secret, ...]:
    items = [refs] if isinstance(refs, str) else list(refs)
    out: list[Secret] = []
    for ref in items:
        if not isinstance(ref, str):
            raise ConfigError(f"{where}: secrets are given as 'env:NAME' or 'file:PATH'")
        if ref.startswith("env:"):
            name = ref[4:]
            if name not in env:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            out.append(Secret(env[name]))
        elif ref.startswith("file:"):
            file = Path(ref[5:])
            if not file.is_absolute() and files.base_dir is not None:
                file = files.base_dir / file
            if files.read is None:
                raise ConfigError(f"{where}: {ref!r} names a file, and no reader was given")
            try:
                out.append(Secret(files.read(file).strip()))
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read {file}: {exc.strerror}") from None
        else:
            # Refuse inline secrets: they end up in repos, tickets and logs.
            raise ConfigError(f"{where}: secrets are given as 'env:NAME' or 'file:PATH'")
    for secret in out:
        if not secret.reveal():
            raise ConfigError(f"{where}: a secret is empty (an empty key verifies anything)")
    return tuple(out)


def _networks(values: Sequence[str], where: str) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(str(v), strict=False) for v in values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _require(table: Mapping[str, Any], key: str, where: str) -> None:
    if key not in table:
        raise ConfigError(f"{where}.{key} is required")
