"""Secret storage: the reference's AES-256-GCM envelope, ids and keys."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.store.crypto import SecretError, decrypt_secret, encrypt_secret, key_from_text, new_app_id, new_secret

REFERENCE_DEFAULT_KEY = b"default-32-byte-encryption-key!!"
# Made by Node's OpenSSL-backed aes-256-gcm with nonce 000102…0b: an independent implementation of the format.
KNOWN_TOKEN = "AAECAwQFBgcICQoLnK6Eg+ElObxa2eTZVtgwDJ23CjQ4olc1Jy1cOtcAi7xmIjyIoPFA89gxTEHFiZRq"
KNOWN_PLAIN = "0123456789abcdef0123456789abcdef"
TAMPERED_TOKEN = KNOWN_TOKEN[:20] + ("B" if KNOWN_TOKEN[20] != "B" else "C") + KNOWN_TOKEN[21:]


def test_decrypts_a_value_sealed_elsewhere_with_a_fixed_nonce() -> None:
    """A secret sealed by another AES-GCM implementation in the reference layout decrypts to its plaintext."""
    assert decrypt_secret(KNOWN_TOKEN, REFERENCE_DEFAULT_KEY) == KNOWN_PLAIN


def test_decrypts_the_gcm_specification_vector() -> None:
    """GCM spec test case 14 (zero key, zero nonce, 16 zero bytes) read through the envelope gives the zeros back."""
    sealed = bytes(12) + bytes.fromhex("cea7403d4d606b6e074ec5d3baf39d18" "d0d1c8a799996bf0265b98b5d48ab919")
    assert decrypt_secret(base64.b64encode(sealed).decode(), bytes(32)) == "\x00" * 16


def test_encrypt_lays_out_nonce_ciphertext_and_tag_with_a_fresh_nonce() -> None:
    """The token is base64 of 12 nonce bytes, the ciphertext and a 16-byte tag; each call draws a new nonce."""
    first = encrypt_secret(KNOWN_PLAIN, REFERENCE_DEFAULT_KEY)
    second = encrypt_secret(KNOWN_PLAIN, REFERENCE_DEFAULT_KEY)
    assert len(base64.b64decode(first)) == 12 + len(KNOWN_PLAIN) + 16
    assert first[:16] != second[:16]
    assert decrypt_secret(first, REFERENCE_DEFAULT_KEY) == decrypt_secret(second, REFERENCE_DEFAULT_KEY) == KNOWN_PLAIN


@given(st.text())
def test_any_text_round_trips(plain: str) -> None:
    """Whatever text is sealed comes back unchanged."""
    assert decrypt_secret(encrypt_secret(plain, REFERENCE_DEFAULT_KEY), REFERENCE_DEFAULT_KEY) == plain


@pytest.mark.parametrize(
    "token",
    [
        TAMPERED_TOKEN,
        "not base64!",
        base64.b64encode(b"short").decode(),
        "",
    ],
    ids=["tampered", "not-base64", "too-short", "empty"],
)
def test_corrupt_values_raise_secret_error(token: str) -> None:
    """A tampered, malformed or truncated value is refused with SecretError."""
    with pytest.raises(SecretError):
        decrypt_secret(token, REFERENCE_DEFAULT_KEY)


def test_wrong_key_raises_secret_error() -> None:
    """A value sealed under one key does not open under another."""
    with pytest.raises(SecretError, match="does not decrypt"):
        decrypt_secret(KNOWN_TOKEN, b"another-32-byte-encryption-key!!")


def test_key_must_be_exactly_32_bytes() -> None:
    """key_from_text counts UTF-8 bytes and names the rule when the length is wrong (the k8s example's 30 bytes)."""
    assert key_from_text("default-32-byte-encryption-key!!") == REFERENCE_DEFAULT_KEY
    with pytest.raises(ValueError, match="exactly 32 bytes.*got 30"):
        key_from_text("a" * 30)
    with pytest.raises(ValueError, match="got 33"):
        key_from_text("密" + "a" * 30)
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        encrypt_secret("x", b"short")


def test_new_ids_and_secrets_are_lowercase_hex_of_the_reference_lengths() -> None:
    """App ids are 16 and secrets 32 lowercase hex characters, and they do not repeat."""
    assert re.fullmatch(r"[0-9a-f]{16}", new_app_id())
    assert re.fullmatch(r"[0-9a-f]{32}", new_secret())
    assert len({new_secret() for _ in range(100)}) == 100


def test_a_hex_key_as_openssl_prints_it_is_32_bytes() -> None:
    """64 hex digits (`openssl rand -hex 32`) stand for their 32 bytes; 32 characters of text stay as they are."""
    assert key_from_text("ab" * 32) == bytes([0xAB] * 32)
    assert key_from_text("k" * 32) == b"k" * 32
    with pytest.raises(ValueError, match="64 hex digits"):
        key_from_text("zz" * 32)


def test_settings_accept_the_hex_key_and_refuse_a_short_one(tmp_path: Path) -> None:
    """`serve` and the other commands take the key the README says to generate; a wrong one is a SettingsError."""
    from engine.settings import Settings, SettingsError

    assert Settings(data_dir=tmp_path, encryption_key="0f" * 32).resolve_secrets().encryption_key == "0f" * 32
    with pytest.raises(SettingsError, match="exactly 32 bytes"):
        Settings(data_dir=tmp_path, encryption_key="short").resolve_secrets()
