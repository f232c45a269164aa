"""Secrets sealed in a database row: AES-256-GCM bound to the row's id and column.

An assignment row (infra/assignments.py) carries a GPU step's request (the job's `env`,
presigned grants) and the step's Temporal task token (with it, anyone who reaches
Temporal completes the step). The control plane's database keeps both sealed: each
value is encrypted under a key derived (HKDF-SHA256) from the Temporal payload keys the
API and the control worker already hold (`GPGPU_TEMPORAL_PAYLOAD_KEYS`,
infra/payload_codec.py), with the row's id and the column's name as associated data, so a
sealed value copied into another row or column does not open. Rotation follows the
payload keys: the first seals, every listed key opens.

A sealed value reads `s1.<key id>.<base64url(nonce || ciphertext || tag)>`; the key id is
the payload key's public name.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from infra.payload_codec import KEY_BYTES, NONCE_BYTES, key_id

PREFIX = "s1"
_INFO = b"gpgpu-row-cipher-v1"  # a key of its own, never the payload key itself


class RowSealError(ValueError):
    """A value that is not sealed, was sealed for another row or column, was changed, or
    was sealed under a key no longer listed."""


def row_key(payload_key: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=_INFO).derive(payload_key)


class RowCipher:
    def __init__(self, payload_keys: Sequence[bytes]):
        if not payload_keys or any(len(k) != KEY_BYTES for k in payload_keys):
            raise ValueError(f"a row cipher needs payload keys of {KEY_BYTES} bytes")
        self._seal_id = key_id(payload_keys[0])
        self._aead = {key_id(k): AESGCM(row_key(k)) for k in payload_keys}

    @staticmethod
    def _bound(table: str, column: str, row_id: str) -> bytes:
        return f"{table}\n{column}\n{row_id}".encode()

    def seal(self, table: str, column: str, row_id: str, plain: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self._seal_id].encrypt(nonce, plain,
                                                   self._bound(table, column, row_id))
        body = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{PREFIX}.{self._seal_id}.{body}"

    def open(self, table: str, column: str, row_id: str, value: str) -> bytes:
        where = f"{table}.{column} of {row_id!r}"
        prefix, _, rest = value.partition(".")
        name, _, body = rest.partition(".")
        if prefix != PREFIX or not body:
            raise RowSealError(f"{where} is not sealed (written before rows were sealed?)")
        aead = self._aead.get(name)
        if aead is None:
            raise RowSealError(f"{where} was sealed under key {name!r}, which is not among"
                               " GPGPU_TEMPORAL_PAYLOAD_KEYS")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                self._bound(table, column, row_id))
        except (InvalidTag, ValueError, binascii.Error) as err:
            raise RowSealError(f"{where} failed its integrity check (changed, or moved"
                               " from another row)") from err
