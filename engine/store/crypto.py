"""Application ids, secrets, and the AES-256-GCM envelope secrets are stored in (reference §2.5)."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import string

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16


class SecretError(Exception):
    """A stored secret cannot be decrypted: wrong key or corrupt value."""


def key_from_text(text: str) -> bytes:
    """The encryption key as the reference reads it, the UTF-8 bytes of the text, exactly 32 of them; or 64 hex
    digits (what `openssl rand -hex 32` prints) standing for 32 bytes."""
    if len(text) == 2 * KEY_BYTES and all(ch in string.hexdigits for ch in text):
        return bytes.fromhex(text)
    key = text.encode("utf-8")
    if len(key) != KEY_BYTES:
        raise ValueError(f"the encryption key must be exactly 32 bytes of UTF-8 text or 64 hex digits "
                         f"(openssl rand -hex 32), got {len(key)} bytes")
    return key


def encrypt_secret(plain: str, key: bytes) -> str:
    """base64(nonce || AES-256-GCM ciphertext || tag), no associated data — byte-compatible with the reference."""
    _check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plain.encode("utf-8"), None)
    return base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_secret(token: str, key: bytes) -> str:
    """The plaintext of a value made by encrypt_secret; SecretError when the key or the value is wrong."""
    _check_key(key)
    try:
        raw = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretError("stored secret is not valid base64") from exc
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise SecretError("stored secret is too short to be an encrypted value")
    try:
        plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None)
    except InvalidTag as exc:
        raise SecretError("stored secret does not decrypt with this key") from exc
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretError("stored secret decrypts to bytes that are not UTF-8") from exc


def new_app_id() -> str:
    """16 lowercase hex characters."""
    return secrets.token_hex(8)


def new_secret() -> str:
    """32 lowercase hex characters (16 random bytes), the HMAC key clients sign with."""
    return secrets.token_hex(16)


def _check_key(key: bytes) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"the encryption key must be exactly {KEY_BYTES} bytes, got {len(key)}")
