from pathlib import Path

import pytest

from contracts.config import Settings, parse_config
from contracts.errors import ConfigError
from payhook.config_files import load_config

SAMPLE = """
[webhooks]
schedule = [0, 1, 3]

[ingress]
trusted_proxies = ["10.0.0.0/8"]

[merchants.shop]
webhook_url = "http://127.0.0.1:9/hook"
secrets = ["env:SHOP_SECRET", "file:shop.secret"]
allow_private = true

[providers.paysera.main]
merchant = "shop"
project_id = "123456"
password = "env:PAYSERA_PASSWORD"
allowed_ips = ["192.0.2.0/24"]
"""


def test_secrets_are_resolved_and_masked(tmp_path: Path) -> None:
    (tmp_path / "payhook.toml").write_text(SAMPLE)
    (tmp_path / "shop.secret").write_text("whsec_second\n")
    env = {"SHOP_SECRET": "whsec_first", "PAYSERA_PASSWORD": "pw-123"}
    config = load_config(tmp_path / "payhook.toml", environ=env)
    shop = config.merchants["shop"]
    assert [s.reveal() for s in shop.secrets] == ["whsec_first", "whsec_second"]
    account = config.account("paysera", "main")
    assert account is not None
    assert account.secret("password")[0].reveal() == "pw-123"
    assert "password" not in account.options
    assert "pw-123" not in repr(config)
    assert "whsec_first" not in repr(config)
    assert config.webhook_schedule == (0.0, 1.0, 3.0)
    assert account.ip_allowed("192.0.2.7")
    assert not account.ip_allowed("198.51.100.1")
    assert config.merchant_for("paysera", "main") is shop


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ('password = "inline-secret"', "env:NAME"),
        ('password = "env:MISSING"', "MISSING is not set"),
        ('merchant = "nobody"', "unknown merchant"),
    ],
)
def test_bad_config_is_refused_with_the_key_named(patch: str, message: str) -> None:
    import tomllib

    text = (
        SAMPLE.replace('password = "env:PAYSERA_PASSWORD"', patch)
        if "password" in patch
        else SAMPLE.replace('merchant = "shop"', patch)
    )
    env = {"SHOP_SECRET": "x", "PAYSERA_PASSWORD": "y"}
    data = tomllib.loads(text.replace(', "file:shop.secret"', ""))

    def load_and_ask_for_the_secret() -> None:
        config = parse_config(data, environ=env)
        account = config.account("paysera", "main")
        assert account is not None
        account.secret("password")  # provider modules ask for their secrets at start-up

    with pytest.raises(ConfigError, match=message):
        load_and_ask_for_the_secret()


def test_empty_secret_is_refused() -> None:
    data = {"merchants": {"m": {"webhook_url": "http://x", "secrets": ["env:E"]}}}
    with pytest.raises(ConfigError, match="empty"):
        parse_config(data, environ={"E": ""})


def test_settings_from_env() -> None:
    settings = Settings.from_env({"PAYHOOK_LISTEN_PORT": "9000", "PAYHOOK_LOG_FORMAT": "console"})
    assert settings.listen_port == 9000
    assert settings.log_format == "console"
    with pytest.raises(ConfigError, match="PAYHOOK_LISTEN_PORT"):
        Settings.from_env({"PAYHOOK_LISTEN_PORT": "eighty"})


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("yes", True), ("0", False), ("off", False)]
)
def test_boolean_settings_read_words_not_truthiness(raw: str, expected: bool) -> None:
    # bool("0") is True: a naive cast would turn "off" on.
    assert Settings.from_env({"PAYHOOK_LISTEN_REUSE_PORT": raw}).listen_reuse_port is expected
    with pytest.raises(ConfigError, match="PAYHOOK_LISTEN_REUSE_PORT"):
        Settings.from_env({"PAYHOOK_LISTEN_REUSE_PORT": "maybe"})


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("auto", None), (True, True), (False, False)]
)
def test_admin_cookie_secure(value: object, expected: bool | None) -> None:
    admin = {} if value is None else {"cookie_secure": value}
    assert parse_config({"admin": admin}).admin_cookie_secure is expected


def test_admin_cookie_secure_refuses_other_words() -> None:
    with pytest.raises(ConfigError, match=r"admin\.cookie_secure"):
        parse_config({"admin": {"cookie_secure": "yes"}})


def test_the_overdue_sweeper_settings_parse_and_refuse_nonsense() -> None:
    settings = Settings.from_env(
        {"PAYHOOK_WEBHOOK_OVERDUE_S": "0", "PAYHOOK_WEBHOOK_SWEEP_INTERVAL_S": "0.5"}
    )
    assert (settings.webhook_overdue_s, settings.webhook_sweep_interval_s) == (0.0, 0.5)
    assert Settings().webhook_overdue_s == 15.0  # on by default
    with pytest.raises(ConfigError, match="PAYHOOK_WEBHOOK_OVERDUE_S"):
        Settings.from_env({"PAYHOOK_WEBHOOK_OVERDUE_S": "-1"})
    with pytest.raises(ConfigError, match="PAYHOOK_WEBHOOK_SWEEP_INTERVAL_S"):
        Settings.from_env({"PAYHOOK_WEBHOOK_SWEEP_INTERVAL_S": "0"})


def test_file_secrets_come_through_the_reader_only(tmp_path: Path) -> None:
    """contracts reads no file itself: a ``file:`` secret is read by the reader it is handed,
    relative to ``base_dir``; without a reader, the reference is refused by name."""
    data = {"merchants": {"m": {"webhook_url": "http://x", "secrets": ["file:keys/m.secret"]}}}
    asked: list[Path] = []

    def reader(path: Path) -> str:
        asked.append(path)
        return "s3cret\n"

    config = parse_config(data, base_dir=tmp_path, read_file=reader)
    assert asked == [tmp_path / "keys" / "m.secret"]
    assert [s.reveal() for s in config.merchants["m"].secrets] == ["s3cret"]
    with pytest.raises(ConfigError, match=r"merchants\.m\.secrets: 'file:keys/m.secret' names"):
        parse_config(data, base_dir=tmp_path)
