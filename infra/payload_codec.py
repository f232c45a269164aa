"""Temporal payloads encrypted with AES-256-GCM, so that histories hold only ciphertext.

A job's history carries what must stay secret: its spec's `env`, the presigned grants of
its transfer plan, step requests. Every Temporal client and worker of the network encodes
each payload (and, with the failure converter below, each failure's message and stack)
with the first key of `GPGPU_TEMPORAL_PAYLOAD_KEYS` and decodes with whichever key's id
the payload names: a list of keys lets an operator rotate (put the new key first, keep
the old ones until no open workflow's history was written with them).

Decoding passes a payload that is not `binary/encrypted` through unchanged: histories
written before the codec (committed replay fixtures, workflows open at the upgrade) still
replay. The codec is for secrecy; who may run a control step is activities/guard.py's concern
(activities/control.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory

ENCODING = b"binary/encrypted"
CIPHER = b"AES-256-GCM"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12


class PayloadKeyError(ValueError):
    """A payload key that is missing or malformed, or a payload no configured key opens."""


def key_id(key: bytes) -> str:
    """A key's public name in each payload's metadata: no secret, but tells keys apart."""
    return hashlib.sha256(b"gpgpu-temporal-payload-key\n" + key).hexdigest()[:16]


def parse_keys(raw: str) -> list[bytes]:
    """`hex,hex,...` (64 hex digits each, the first encrypts) as keys; PayloadKeyError names
    the setting and which entry is wrong."""
    keys = []
    for n, part in enumerate(p.strip() for p in raw.split(",")):
        try:
            key = bytes.fromhex(part)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            raise PayloadKeyError(
                f"GPGPU_TEMPORAL_PAYLOAD_KEYS: entry {n} is not {KEY_BYTES * 2} hex digits"
                " (make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        keys.append(key)
    if not keys:
        raise PayloadKeyError("GPGPU_TEMPORAL_PAYLOAD_KEYS holds no key")
    return keys


class PayloadCipher(temporalio.converter.PayloadCodec):
    """AES-256-GCM over each whole serialized payload (its metadata too), a fresh nonce each."""

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise PayloadKeyError("a payload cipher needs at least one key")
        if any(len(k) != KEY_BYTES for k in keys):
            raise PayloadKeyError(f"every payload key is {KEY_BYTES} bytes")
        self._encrypt_id = key_id(keys[0])
        self._aead = {key_id(k): AESGCM(k) for k in keys}

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self._encrypt_id].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={"encoding": ENCODING, "encryption-cipher": CIPHER,
                      KEY_ID: self._encrypt_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        name = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        aead = self._aead.get(name)
        if aead is None:
            raise PayloadKeyError(
                f"a payload was encrypted with key {name!r}, which is not among"
                " GPGPU_TEMPORAL_PAYLOAD_KEYS (an old key dropped too soon?)"
            )
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag as err:
            raise PayloadKeyError(f"a payload under key {name!r} failed its integrity check") \
                from err
        return Payload.FromString(plain)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]


def data_converter(keys: Sequence[bytes]) -> temporalio.converter.DataConverter:
    """The converter for every client, worker and replayer of the network: payloads and
    failures' messages and stack traces encrypted."""
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_codec=PayloadCipher(keys),
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )


def decrypt_history(history: WorkflowHistory, keys: Sequence[bytes]) -> WorkflowHistory:
    """A copy of `history` with every payload decrypted in place (the failures' encoded
    attributes stay as payloads): to read a history, or commit it as a replay fixture."""
    cipher = PayloadCipher(keys)
    events = []
    for event in history.events:
        copy = type(event)()
        copy.CopyFrom(event)
        _decrypt_all(copy, cipher)
        events.append(copy)
    return WorkflowHistory(history.workflow_id, events)


def _decrypt_all(message: Message, cipher: PayloadCipher) -> None:
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.full_name == Payload.DESCRIPTOR.full_name:
            items = list(value) if _repeated(field) else [value]
            for item in items:
                item.CopyFrom(cipher.decrypt(item))
        elif field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            for key in value:
                _decrypt_or_walk(value[key], cipher)
        elif _repeated(field):
            for item in value:
                _decrypt_all(item, cipher)
        else:
            _decrypt_all(value, cipher)


def _decrypt_or_walk(message: Message, cipher: PayloadCipher) -> None:
    if isinstance(message, Payload):
        message.CopyFrom(cipher.decrypt(message))
    else:
        _decrypt_all(message, cipher)


def _repeated(field: object) -> bool:
    label = getattr(field, "label", None)
    return bool(label == 3 or getattr(field, "is_repeated", False))  # LABEL_REPEATED
