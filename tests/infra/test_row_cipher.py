"""The row cipher (infra/row_cipher.py): a sealed value opens only in its own row and column,
unchanged, under a listed key; a plaintext value (a row from before) does not open."""

from __future__ import annotations

import base64
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.payload_codec import key_id
from infra.row_cipher import RowCipher, RowSealError

NEW, OLD = secrets.token_bytes(32), secrets.token_bytes(32)
PLAIN = b'{"env": {"API_TOKEN": "tok-secret"}, "url": "http://api/storage/c/k?sig=abc"}'


def test_a_sealed_value_holds_no_plaintext_and_opens_in_its_own_row() -> None:
    cipher = RowCipher([NEW])
    sealed = cipher.seal("assignments", "request", "row-1", PLAIN)
    assert b"tok-secret" not in sealed.encode() and b"sig=" not in sealed.encode()
    assert sealed != cipher.seal("assignments", "request", "row-1", PLAIN)  # a fresh nonce
    assert cipher.open("assignments", "request", "row-1", sealed) == PLAIN


def test_a_changed_value_is_refused() -> None:
    cipher = RowCipher([NEW])
    sealed = cipher.seal("assignments", "request", "row-1", PLAIN)
    head, _, body = sealed.rpartition(".")
    flipped = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
    for tampered in (f"{head}.{flipped}", sealed[:-4], f"{head}.", f"{head}.!!!"):
        with pytest.raises(RowSealError):
            cipher.open("assignments", "request", "row-1", tampered)


def test_a_value_moved_to_another_row_or_column_is_refused() -> None:
    cipher = RowCipher([NEW])
    sealed = cipher.seal("assignments", "request", "row-1", PLAIN)
    with pytest.raises(RowSealError, match="integrity check"):
        cipher.open("assignments", "request", "row-2", sealed)
    with pytest.raises(RowSealError, match="integrity check"):
        cipher.open("assignments", "task_token", "row-1", sealed)


def test_a_plaintext_value_from_before_is_refused() -> None:
    with pytest.raises(RowSealError, match="not sealed"):
        RowCipher([NEW]).open("assignments", "request", "row-1", PLAIN.decode())
    with pytest.raises(RowSealError, match="not sealed"):
        RowCipher([NEW]).open("assignments", "task_token", "row-1", "00746f6b656eff")


def test_keys_rotate_with_the_payload_keys_and_a_dropped_key_opens_nothing() -> None:
    old_sealed = RowCipher([OLD]).seal("assignments", "request", "row-1", PLAIN)
    assert RowCipher([NEW, OLD]).open("assignments", "request", "row-1", old_sealed) == PLAIN
    with pytest.raises(RowSealError, match="not among GPGPU_TEMPORAL_PAYLOAD_KEYS"):
        RowCipher([NEW]).open("assignments", "request", "row-1", old_sealed)


def test_the_row_key_is_not_the_payload_key() -> None:
    """A value sealed with the payload key itself (no derivation) does not open: the two
    uses of the key material never share a key."""
    nonce = b"\x00" * 12
    raw = AESGCM(NEW).encrypt(nonce, PLAIN, b"assignments\nrequest\nrow-1")
    forged = f"s1.{key_id(NEW)}.{base64.urlsafe_b64encode(nonce + raw).decode()}"
    with pytest.raises(RowSealError):
        RowCipher([NEW]).open("assignments", "request", "row-1", forged)
