"""Paysera: providers.md §1 worked examples, ss1/ss2/ss3, encrypted mode, SMS, refunds."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from contracts.config import ProviderAccount
from contracts.errors import ConfigError
from contracts.statuses import Kind, Status, VerifiedBy
from ingress.providers import _paysera_crypto as crypto
from ingress.providers.paysera import DEFAULT_SMS_REPLY

from .helpers import ENV, account, payment, raw, refusal, rejected, simulated, verify

BAD_SIGNATURE = (401, "bad signature")
BAD_ENCRYPTED = (401, "bad encrypted data")

PASSWORD = ENV["PAYSERA_PASSWORD"]
EXAMPLE_QUERY = (
    "projectid=123456&orderid=ORD-1001&lang=ENG&amount=1250&currency=EUR&payment=hanza&country=LT"
    "&paytext=Order+ORD-1001&status=1&test=0&payamount=1250&paycurrency=EUR&requestid=987654321"
    "&version=1.6&type=macro"
)
EXAMPLE_DATA = (
    "cHJvamVjdGlkPTEyMzQ1NiZvcmRlcmlkPU9SRC0xMDAxJmxhbmc9RU5HJmFtb3VudD0xMjUwJmN1cnJlbmN5PUVVUiZw"
    "YXltZW50PWhhbnphJmNvdW50cnk9TFQmcGF5dGV4dD1PcmRlcitPUkQtMTAwMSZzdGF0dXM9MSZ0ZXN0PTAmcGF5YW1v"
    "dW50PTEyNTAmcGF5Y3VycmVuY3k9RVVSJnJlcXVlc3RpZD05ODc2NTQzMjEmdmVyc2lvbj0xLjYmdHlwZT1tYWNybw=="
)
EXAMPLE_SS1 = "94c31d37cc632179737937c0e5438414"
EXAMPLE_ENCRYPTED = (
    "AAECAwQFBgcICQoL9LV_cnOm3FZVYocBGQBTNV-F3yvft381Bd_iG75qjpmWFRqmamuuIhLWA38vZOJ_UJpyJrrOpW5R"
    "y7jj3HMI4QXNX-l6MGo88ve91Y4OBdbBOQQ-oL2OjgKHKkoW8gFXnLIcq5MZFuupJbqQD1GU4T6PxD3bc4bbQq72Jopj"
    "PZS0ceQjv4eIa7AvY4P9CyDxjl0W2hjZzHbk-AvG3VRc4H_wShmaDs1w3FxgFOtIOd94AsQsBJVMwOdze5XsyD2Wgy"
    "Mpbwm4rc-vgboa2P_hnclZBLE3arhqk75pT9k="
)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_files(rsa_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway key pair: private.pem, public.pem and a self-signed cert.pem."""
    folder = tmp_path_factory.mktemp("paysera-keys")
    (folder / "private.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = rsa_key.public_key()
    (folder / "public.pem").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Paysera test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder


def rsa_account(key_files: Path, form: str = "public.pem", **table: Any) -> ProviderAccount:
    return account("paysera", public_key_file=str(key_files / form), **table)


def signed_query(key: rsa.RSAPrivateKey, data: str, *, ss2: bool = True, ss3: bool = True) -> str:
    params = {"data": data, "ss1": crypto.ss1(data, PASSWORD)}
    if ss2:
        params["ss2"] = crypto.rsa_sign(key, data, sha256=False)
    if ss3:
        params["ss3"] = crypto.rsa_sign(key, data, sha256=True)
    return urlencode(params)


def data_of(query: str) -> str:
    return crypto.b64url_encode(query.encode())


# --- worked examples --------------------------------------------------------------------------


def test_worked_example_data_and_ss1() -> None:
    assert data_of(EXAMPLE_QUERY) == EXAMPLE_DATA
    assert crypto.ss1(EXAMPLE_DATA, PASSWORD) == EXAMPLE_SS1


def test_worked_example_ss1_when_allowed() -> None:
    acc = account("paysera", allow_ss1=True)
    query = urlencode({"data": EXAMPLE_DATA, "ss1": EXAMPLE_SS1})
    accepted = verify("paysera", acc, raw(query=query))
    cb = accepted.callback
    assert accepted.ack.body == b"OK"
    assert accepted.ack.status == 200
    assert (cb.transaction_id, cb.order_id, cb.provider_status) == ("987654321", "ORD-1001", "1")
    assert cb.status is Status.SUCCEEDED
    assert cb.kind is Kind.PAYMENT
    assert (cb.amount, cb.currency, cb.paid_amount, cb.paid_currency) == (1250, "EUR", 1250, "EUR")
    assert cb.test is False
    assert cb.verified_by is VerifiedBy.SIGNATURE
    assert cb.details["payment"] == "hanza"
    assert cb.raw.query_string == query


def test_worked_example_encrypted() -> None:
    assert crypto.encrypt_gcm(EXAMPLE_QUERY.encode(), PASSWORD, bytes(range(12))) == (
        EXAMPLE_ENCRYPTED
    )
    cb = verify("paysera", account("paysera"), raw(query=f"data={EXAMPLE_ENCRYPTED}")).callback
    assert cb.status is Status.SUCCEEDED
    assert cb.amount == 1250


def test_encrypted_in_post_form_body() -> None:
    body = urlencode({"data": EXAMPLE_ENCRYPTED}).encode()
    request = raw("POST", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert verify("paysera", account("paysera"), request).callback.order_id == "ORD-1001"


def test_rotated_password_is_accepted() -> None:
    acc = account("paysera", password=["env:PAYSERA_PASSWORD_NEXT", "env:PAYSERA_PASSWORD"])
    assert verify("paysera", acc, raw(query=f"data={EXAMPLE_ENCRYPTED}")).callback.amount == 1250


def test_pinned_public_key_fingerprint() -> None:
    keys = crypto.default_public_keys()
    assert [crypto.fingerprint(k) for k in keys] == [crypto.PINNED_FINGERPRINT]
    assert crypto.PINNED_FINGERPRINT.startswith("457d34b4")


def test_rsa_signature_against_pinned_key_fails(rsa_key: rsa.RSAPrivateKey) -> None:
    query = signed_query(rsa_key, EXAMPLE_DATA)
    assert refusal("paysera", account("paysera"), raw(query=query)) == BAD_SIGNATURE


# --- ss2 / ss3 with a throwaway key ------------------------------------------------------------


@pytest.mark.parametrize("form", ["public.pem", "cert.pem"])
@pytest.mark.parametrize(("ss2", "ss3"), [(True, True), (True, False), (False, True)])
def test_rsa_signatures(
    rsa_key: rsa.RSAPrivateKey, key_files: Path, form: str, ss2: bool, ss3: bool
) -> None:
    query = signed_query(rsa_key, EXAMPLE_DATA, ss2=ss2, ss3=ss3)
    cb = verify("paysera", rsa_account(key_files, form), raw(query=query)).callback
    assert cb.transaction_id == "987654321"


def test_public_key_as_file_reference(rsa_key: rsa.RSAPrivateKey, key_files: Path) -> None:
    acc = account("paysera", public_key_file=f"file:{key_files / 'cert.pem'}")
    assert verify("paysera", acc, raw(query=signed_query(rsa_key, EXAMPLE_DATA))).callback


def test_ss3_decides_when_both_present(rsa_key: rsa.RSAPrivateKey, key_files: Path) -> None:
    good_ss2 = crypto.rsa_sign(rsa_key, EXAMPLE_DATA, sha256=False)
    bad_ss3 = crypto.rsa_sign(rsa_key, EXAMPLE_DATA + "x", sha256=True)
    query = urlencode({"data": EXAMPLE_DATA, "ss2": good_ss2, "ss3": bad_ss3})
    assert refusal("paysera", rsa_account(key_files), raw(query=query)) == BAD_SIGNATURE


def test_ss2_with_wrong_hash_is_refused(rsa_key: rsa.RSAPrivateKey, key_files: Path) -> None:
    sha256_sig = crypto.rsa_sign(rsa_key, EXAMPLE_DATA, sha256=True)
    query = urlencode({"data": EXAMPLE_DATA, "ss2": sha256_sig})
    assert refusal("paysera", rsa_account(key_files), raw(query=query)) == BAD_SIGNATURE


def test_tampered_data_is_refused(rsa_key: rsa.RSAPrivateKey, key_files: Path) -> None:
    query = signed_query(rsa_key, EXAMPLE_DATA).replace("cHJvamVjdGlk", "cHJvamVjdGlj", 1)
    assert refusal("paysera", rsa_account(key_files), raw(query=query)) == BAD_SIGNATURE


def test_simulator_can_sign_ss3(rsa_key: rsa.RSAPrivateKey, key_files: Path) -> None:
    acc = rsa_account(key_files)
    extra = {"mode": "ss3", "private_key_file": str(key_files / "private.pem")}
    _, request = simulated("paysera", acc, payment(extra=extra))
    assert "ss3=" in request.query_string
    assert verify("paysera", acc, request).callback.status is Status.SUCCEEDED


# --- rejections --------------------------------------------------------------------------------


def test_ss1_refused_unless_allowed() -> None:
    query = urlencode({"data": EXAMPLE_DATA, "ss1": EXAMPLE_SS1})
    assert refusal("paysera", account("paysera"), raw(query=query)) == (
        401,
        "ss1 signatures are not accepted for this account",
    )


def test_wrong_ss1() -> None:
    query = urlencode({"data": EXAMPLE_DATA, "ss1": "0" * 32})
    assert refusal("paysera", account("paysera", allow_ss1=True), raw(query=query)) == (
        BAD_SIGNATURE
    )


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("", (400, "missing data")),
        ("ss1=abc", (400, "missing data")),
        ("data=", (400, "missing data")),
        ("data=%%%", (400, "undecodable data")),
        ("data=!!!!", (400, "undecodable data")),  # not base64
        ("data=" + "A" * 40, BAD_ENCRYPTED),  # base64, but the GCM tag fails
        ("data=%ff%fe", (400, "query is malformed")),  # not UTF-8
    ],
)
def test_malformed(query: str, refused: tuple[int, str]) -> None:
    assert refusal("paysera", account("paysera"), raw(query=query)) == refused


def test_encrypted_tampered() -> None:
    tampered = "AAECAwQFBgcICQoL9LV_cnOm3FZVYocBGQBTNV-F" + EXAMPLE_ENCRYPTED[40:].replace(
        "F", "G", 1
    )
    assert refusal("paysera", account("paysera"), raw(query=f"data={tampered}")) == BAD_ENCRYPTED


def test_encrypted_with_other_password() -> None:
    acc = account("paysera", password="env:PAYSERA_PASSWORD_NEXT")
    assert refusal("paysera", acc, raw(query=f"data={EXAMPLE_ENCRYPTED}")) == BAD_ENCRYPTED


def test_wrong_project() -> None:
    acc = account("paysera", project_id="654321")
    exc = rejected("paysera", acc, raw(query=f"data={EXAMPLE_ENCRYPTED}"))
    assert (exc.status, exc.reason) == (422, "wrong projectid")


def encrypted_query(fields: str) -> str:
    return "data=" + crypto.encrypt_gcm(fields.encode(), PASSWORD)


def test_missing_projectid() -> None:
    query = encrypted_query("orderid=1&status=1&requestid=5")
    assert refusal("paysera", account("paysera"), raw(query=query)) == (400, "missing projectid")


def test_unknown_currency() -> None:
    query = encrypted_query("projectid=123456&orderid=1&status=1&amount=100&currency=XYZ")
    assert refusal("paysera", account("paysera"), raw(query=query)) == (422, "unknown currency")


def test_amount_not_integer() -> None:
    query = encrypted_query("projectid=123456&orderid=1&status=1&amount=1.5&currency=EUR")
    assert refusal("paysera", account("paysera"), raw(query=query)) == (400, "invalid amount")


# --- statuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("0", Status.FAILED),
        ("1", Status.SUCCEEDED),
        ("2", Status.PENDING),
        ("3", Status.INFO),
        ("4", Status.PENDING),
        ("5", Status.UNRECOGNIZED),
        ("x", Status.UNRECOGNIZED),
    ],
)
def test_status_mapping(code: str, expected: Status) -> None:
    acc = account("paysera")
    _, request = simulated("paysera", acc, payment(extra={"provider_status": code}))
    accepted = verify("paysera", acc, request)
    assert accepted.callback.status is expected
    assert accepted.callback.provider_status == code
    assert accepted.ack.body == b"OK"  # acknowledged whatever the status
    assert accepted.callback.details.get("unconfirmed", False) is (code == "4")


def test_refund_full_and_partial() -> None:
    acc = account("paysera")
    _, full = simulated("paysera", acc, payment("refunded", transaction_id="77"))
    cb = verify("paysera", acc, full).callback
    assert (cb.status, cb.provider_status, cb.refund_amount) == (Status.REFUNDED, "3", 1250)
    assert cb.variant == "1735689600"
    extra = {"refund_amount": "2.50", "refund_timestamp": "1735690000"}
    _, part = simulated(
        "paysera", acc, payment("partially_refunded", transaction_id="77", extra=extra)
    )
    cb2 = verify("paysera", acc, part).callback
    assert (cb2.status, cb2.refund_amount) == (Status.PARTIALLY_REFUNDED, 250)
    assert cb2.details["refund_currency"] == "EUR"
    # Two refunds of one payment are two callbacks, not a resend of one.
    assert cb.id != cb2.id
    assert cb.transaction_id == cb2.transaction_id == "77"


def test_same_callback_same_id() -> None:
    acc = account("paysera")
    query = f"data={EXAMPLE_ENCRYPTED}"
    assert verify("paysera", acc, raw(query=query)).callback.id == (
        verify("paysera", acc, raw(query=query, remote="198.51.100.1")).callback.id
    )


def test_test_flag() -> None:
    acc = account("paysera")
    _, request = simulated("paysera", acc, payment(test=True))
    assert verify("paysera", acc, request).callback.test is True


def test_personal_data_stays_out_of_details() -> None:
    query = encrypted_query(
        "projectid=123456&orderid=1&status=1&requestid=9&amount=100&currency=EUR"
        "&name=Jonas&surename=Jonaitis&p_email=j%40example.com&payer_ip_country=LT"
    )
    cb = verify("paysera", account("paysera"), raw(query=query)).callback
    text = repr(cb.details)
    assert "Jonas" not in text
    assert "example.com" not in text


# --- SMS (micro) -------------------------------------------------------------------------------


def test_sms_callback_replies_with_text() -> None:
    acc = account("paysera", sms_reply="Your code: 1234")
    _, request = simulated("paysera", acc, payment(transaction_id="555", extra={"type": "micro"}))
    accepted = verify("paysera", acc, request)
    cb = accepted.callback
    assert accepted.ack.body == b"OK Your code: 1234"
    assert (cb.transaction_id, cb.status, cb.amount) == ("555", Status.SUCCEEDED, 1250)
    assert "from" not in cb.details  # the payer's phone number stays in raw only


def test_sms_detected_without_type() -> None:
    query = encrypted_query(
        "projectid=123456&to=1679&from=37060000000&sms=PAY+1&id=42&amount=100&currency=EUR"
    )
    accepted = verify("paysera", account("paysera"), raw(query=query))
    assert accepted.ack.body == f"OK {DEFAULT_SMS_REPLY}".encode()
    assert accepted.callback.transaction_id == "42"


# --- configuration -----------------------------------------------------------------------------


def test_check_account_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="project_id"):
        account("paysera", project_id=None)
    with pytest.raises(ConfigError, match="password"):
        account("paysera", password=None)
    with pytest.raises(ConfigError, match="password"):
        account("paysera", password="inline-secret")
    with pytest.raises(ConfigError, match="allow_ss1"):
        account("paysera", allow_ss1="yes")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match="public_key_file"):
        account("paysera", public_key_file=str(junk))
    with pytest.raises(ConfigError, match="public_key_file"):
        account("paysera", public_key_file=str(tmp_path / "missing.pem"))


def test_request_signing_example_matches_lib() -> None:
    # RequestBuilder's sign = md5(data + password): the same primitive as ss1.
    params = (
        "orderid=ORD-1001&accepturl=https%3A%2F%2Fshop.example%2Fok"
        "&cancelurl=https%3A%2F%2Fshop.example%2Fcancel&callbackurl=https%3A%2F%2Fshop.example%2Fcb"
        "&amount=1250&currency=EUR&version=1.6&projectid=123456"
    )
    assert crypto.ss1(data_of(params), PASSWORD) == "1faac1d3b8b1674a3c3f79451df5647d"
    assert hashlib.md5(f"{PASSWORD}|12345".encode()).hexdigest() == (
        "0ad0b715be6a48b428fe6b60c8be3d66"
    )
