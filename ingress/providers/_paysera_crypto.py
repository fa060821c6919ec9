"""Paysera's cryptography: url-safe base64, ss1/ss2/ss3 signatures, AES-256-GCM encrypted mode.

The pinned public key ships as ``paysera_public.pem`` (SPKI SHA-256
``457d34b44ac72ee2331c491e5d25ba9ed2839a4409b67c4ea91d02abea73c330``, the key Paysera serves at
``https://www.paysera.com/download/public.key``). It is checked against that fingerprint on
load, so a corrupted or swapped file fails loudly instead of verifying nothing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "PINNED_FINGERPRINT",
    "b64url_decode",
    "b64url_encode",
    "decrypt_gcm",
    "default_public_keys",
    "encrypt_gcm",
    "fingerprint",
    "load_private_key",
    "public_keys_from_path",
    "public_keys_from_pem",
    "rsa_sign",
    "rsa_verify",
    "ss1",
]

PINNED_FINGERPRINT = "457d34b44ac72ee2331c491e5d25ba9ed2839a4409b67c4ea91d02abea73c330"

_TO_STD = str.maketrans("-_", "+/")
_TO_URL = str.maketrans("+/", "-_")
_IV_BYTES = 12
_TAG_BYTES = 16


def b64url_encode(raw: bytes) -> str:
    """Paysera's url-safe base64: standard alphabet swapped, ``=`` padding kept."""
    return base64.b64encode(raw).decode("ascii").translate(_TO_URL)


def b64url_decode(text: str) -> bytes | None:
    """Inverse of ``b64url_encode``; ``None`` for anything that is not such base64."""
    if not text.isascii():
        return None
    std = text.translate(_TO_STD)
    std += "=" * (-len(std) % 4)  # tolerate stripped padding; the signature still covers `text`
    try:
        raw = base64.b64decode(std, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Only the canonical encoding (unused low bits zero) is accepted: PHP never sends another,
    # and two spellings of one ciphertext would be two requests that are secretly the same.
    if base64.b64encode(raw).decode("ascii") != std:
        return None
    return raw


def ss1(data: str, password: str) -> str:
    return hashlib.md5((data + password).encode("utf-8")).hexdigest()


def fingerprint(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@functools.lru_cache(maxsize=32)  # parsing a PEM costs more than the RSA check itself
def public_keys_from_pem(pem: bytes) -> tuple[rsa.RSAPublicKey, ...]:
    """Every RSA public key in ``pem``: ``PUBLIC KEY``, ``RSA PUBLIC KEY`` or ``CERTIFICATE``
    blocks (Paysera's live URL serves a certificate, its sandbox a bare key).

    Raises ``ValueError`` when no usable RSA key is found.
    """
    keys: list[rsa.RSAPublicKey] = []
    for block in _pem_blocks(pem):
        if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
            key: object = x509.load_pem_x509_certificate(block).public_key()
        else:
            key = serialization.load_pem_public_key(block)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("Paysera signs with RSA; this key is not an RSA key")
        keys.append(key)
    if not keys:
        raise ValueError("no PEM public key or certificate found")
    return tuple(keys)


def _pem_blocks(pem: bytes) -> list[bytes]:
    blocks: list[bytes] = []
    rest = pem
    while (start := rest.find(b"-----BEGIN ")) >= 0:
        end_marker = rest.find(b"-----END ", start)
        if end_marker < 0:
            raise ValueError("unterminated PEM block")
        end = rest.find(b"-----", end_marker + 9)
        if end < 0:
            raise ValueError("unterminated PEM block")
        blocks.append(rest[start : end + 5] + b"\n")
        rest = rest[end + 5 :]
    return blocks


@functools.lru_cache(maxsize=32)
def public_keys_from_path(path: str) -> tuple[rsa.RSAPublicKey, ...]:
    """Keys from a PEM file, read once per process (verification must not do file I/O)."""
    with open(path, "rb") as handle:
        return public_keys_from_pem(handle.read())


@functools.cache
def default_public_keys() -> tuple[rsa.RSAPublicKey, ...]:
    pem = resources.files("ingress.providers").joinpath("paysera_public.pem").read_bytes()
    keys = public_keys_from_pem(pem)
    if [fingerprint(k) for k in keys] != [PINNED_FINGERPRINT]:
        raise RuntimeError("ingress/providers/paysera_public.pem is not Paysera's pinned key")
    return keys


def rsa_verify(keys: tuple[rsa.RSAPublicKey, ...], signature: str, data: str, sha256: bool) -> bool:
    """PKCS#1 v1.5 over the ASCII ``data`` as received; ss3 uses SHA-256, ss2 SHA-1."""
    raw = b64url_decode(signature)
    if raw is None or not data.isascii():
        return False
    # ss2 is SHA-1 because Paysera signs it so; ss3 (SHA-256) is preferred when sent.
    algorithm: hashes.HashAlgorithm = hashes.SHA256() if sha256 else hashes.SHA1()  # noqa: S303
    for key in keys:
        try:
            key.verify(raw, data.encode("ascii"), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            continue
        return True
    return False


def rsa_sign(key: rsa.RSAPrivateKey, data: str, sha256: bool) -> str:
    algorithm: hashes.HashAlgorithm = hashes.SHA256() if sha256 else hashes.SHA1()  # noqa: S303
    return b64url_encode(key.sign(data.encode("ascii"), padding.PKCS1v15(), algorithm))


def load_private_key(path: str) -> rsa.RSAPrivateKey:
    with open(path, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def _gcm_key(password: str) -> bytes:
    # PHP's openssl pads a short key with NUL bytes and cuts a long one to 32 bytes.
    return password.encode("utf-8")[:32].ljust(32, b"\0")


def decrypt_gcm(data: str, password: str) -> bytes | None:
    """Encrypted mode: ``data`` = url-safe-b64(IV ‖ ciphertext ‖ tag); ``None`` on a bad tag."""
    raw = b64url_decode(data)
    if raw is None or len(raw) < _IV_BYTES + _TAG_BYTES:
        return None
    try:
        return AESGCM(_gcm_key(password)).decrypt(raw[:_IV_BYTES], raw[_IV_BYTES:], None)
    except InvalidTag:
        return None


def encrypt_gcm(plaintext: bytes, password: str, iv: bytes | None = None) -> str:
    iv = os.urandom(_IV_BYTES) if iv is None else iv
    return b64url_encode(iv + AESGCM(_gcm_key(password)).encrypt(iv, plaintext, None))
