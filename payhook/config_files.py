"""The configuration's I/O: the TOML file, the secret files it names, the environment.

``contracts.config`` parses and does no I/O; this is where the bytes come from. Every process
(``payhook.cli``) and every tool that starts from a config file (benchmarks, tests) reads it
here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from contracts.config import Config, Settings, parse_config
from contracts.errors import ConfigError

__all__ = ["load_config", "read_secret_file", "settings_from_environment"]


def read_secret_file(path: Path) -> str:
    """What a ``file:`` secret reference names (``OSError`` if it cannot be read)."""
    return path.read_text(encoding="utf-8")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and parse the TOML file at ``path``; ``env:`` secrets from ``environ`` (default:
    this process's environment), ``file:`` ones relative to the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(
        data,
        base_dir=path.parent,
        environ=os.environ if environ is None else environ,
        read_file=read_secret_file,
    )


def settings_from_environment() -> Settings:
    """This process's ``Settings``: its ``PAYHOOK_*`` environment variables."""
    return Settings.from_env(os.environ)
