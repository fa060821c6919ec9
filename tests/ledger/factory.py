"""Build ``CallbackReceived`` test inputs directly (no provider modules) and test configs."""

from __future__ import annotations

from typing import Any

from contracts.callbacks import CallbackReceived, RawRequest
from contracts.config import Config, parse_config
from contracts.statuses import Kind, Status, VerifiedBy

# Each provider with the proof its real module gives (providers.md, summary table).
PROVIDERS: dict[str, VerifiedBy] = {
    "paysera": VerifiedBy.SIGNATURE,
    "paygol": VerifiedBy.SHARED_SECRET,
    "paycore": VerifiedBy.SIGNATURE,
    "paypro": VerifiedBy.SIGNATURE,
    "paysepro": VerifiedBy.SOURCE_ADDRESS,
}
ACCOUNT = "main"
MERCHANT = "shop"
ADMIN_TOKEN = "admin-token-for-tests"


def config_dict(**ledger: Any) -> dict[str, Any]:
    return {
        "merchants": {MERCHANT: {"webhook_url": "http://127.0.0.1:9/hook"}},
        "providers": {p: {ACCOUNT: {"merchant": MERCHANT}} for p in PROVIDERS},
        "ledger": dict(ledger),
        "admin": {"tokens": ["env:LEDGER_TEST_ADMIN_TOKEN"]},
    }


def make_config(data: dict[str, Any] | None = None) -> Config:
    return parse_config(data or config_dict(), environ={"LEDGER_TEST_ADMIN_TOKEN": ADMIN_TOKEN})


def config_toml(**ledger: Any) -> str:
    """The same configuration as TOML, for a worker run as a subprocess."""
    lines = [f"[merchants.{MERCHANT}]", 'webhook_url = "http://127.0.0.1:9/hook"', ""]
    for provider in PROVIDERS:
        lines += [f"[providers.{provider}.{ACCOUNT}]", f'merchant = "{MERCHANT}"', ""]
    lines.append("[ledger]")
    for key, value in ledger.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value!r}")
    return "\n".join(lines) + "\n"


def callback(
    status: Status,
    transaction_id: str = "T1",
    *,
    provider: str = "paysera",
    account: str = ACCOUNT,
    kind: Kind = Kind.PAYMENT,
    amount: int | None = 1250,
    currency: str | None = "EUR",
    paid_amount: int | None = None,
    paid_currency: str | None = None,
    refund_amount: int | None = None,
    fee_amount: int | None = None,
    fee_currency: str | None = None,
    order_id: str | None = "ORD-1",
    test: bool = False,
    variant: str = "",
    provider_status: str | None = None,
    verified_by: VerifiedBy | None = None,
    correlation_id: str = "",
) -> CallbackReceived:
    return CallbackReceived(
        provider=provider,
        account=account,
        transaction_id=transaction_id,
        provider_status=provider_status or status.value,
        status=status,
        kind=kind,
        verified_by=verified_by or PROVIDERS.get(provider, VerifiedBy.SIGNATURE),
        received_at="2026-01-02T03:04:05Z",
        raw=RawRequest(
            method="POST",
            path=f"/callbacks/{provider}/{account}",
            query_string="",
            body=f"tx={transaction_id}&status={status.value}".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
            remote="127.0.0.1",
        ),
        order_id=order_id,
        amount=amount,
        currency=currency,
        paid_amount=paid_amount,
        paid_currency=paid_currency,
        refund_amount=refund_amount,
        fee_amount=fee_amount,
        fee_currency=fee_currency,
        test=test,
        variant=variant,
        correlation_id=correlation_id,
    )
