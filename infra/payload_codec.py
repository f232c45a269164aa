"""Temporal payloads encrypted with AES-256-GCM, so that histories hold only ciphertext.

A job's history carries what must stay secret: its spec's `env`, the presigned grants of
its transfer plan, step requests. Every Temporal client and worker of the network encodes
each payload (and, with the failure converter below, each failure's message and stack)
with the first key of `GPGPU_TEMPORAL_PAYLOAD_KEYS` and decodes with whichever key's id
the payload names: a list of keys lets an operator rotate (put the new key first, keep
the old ones until no open workflow's history was written with them).

Decoding refuses every payload that is not `binary/encrypted` under one of the keys
(PayloadRefused, a non-retryable ApplicationError, raised where the value is read: see
PayloadCipher.opened), so AES-GCM's tag is the proof that a payload was written by a
process of the network. Whoever reached Temporal without the key and starts a workflow,
sends a signal or completes an activity with a plaintext or forged payload gets nothing
run: a workflow whose input is refused fails at its first task, before any of its code or
steps; a control step whose request is refused fails (and each retry); a signal is
dropped, and the workflow it was sent to goes on. A payload under a well-formed key id
that is not configured is PayloadKeyError, retried (see PayloadRefused). What
Temporal itself writes in the clear never goes through the codec: search attributes,
headers (the tracing context), the markers the SDK's core records for local activities and
patches. The one payload the server itself writes, its marker for an activity cancelled
before it started, passes decoding as it is (SERVER_MARKERS). The tag proves where a
payload was made, not for which workflow: a ciphertext copied from one history into
another workflow still opens, and who may run a control step for which job stays
activities/guard.py's concern (activities/control.py).
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
from temporalio.exceptions import ApplicationError

ENCODING = b"binary/encrypted"
CIPHER = b"AES-256-GCM"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12
# What the codec hands the SDK in place of a payload it refused (PayloadCipher.opened).
REFUSED = b"binary/gpgpu-refused"

# The one payload Temporal's server writes itself: the details of an activity it cancels
# before any worker started it (history service, `activityCancellationMsgActivityNotStarted`,
# encoded as a JSON string). It is let through as it is: it says nothing but that marker,
# and a workflow that is handed it anywhere else fails to convert it like any wrong value.
SERVER_MARKERS = frozenset({
    Payload(metadata={"encoding": b"json/plain"}, data=b'"ACTIVITY_ID_NOT_STARTED"')
    .SerializeToString(deterministic=True),
})


class PayloadKeyError(ValueError):
    """A payload key that is missing or malformed, or a payload no configured key opens."""


class PayloadRefused(PayloadKeyError, ApplicationError):
    """A payload that is not the network's: in the clear, or altered. Non-retryable: the
    workflow or step it was given to fails at once (a retry would read the same payload).
    A payload under a key id that is not configured is a plain PayloadKeyError instead: the
    workflow task fails and is retried, so that a key dropped too soon during a rotation
    stalls workflows until it is put back rather than failing them."""

    def __init__(self, message: str):
        ApplicationError.__init__(self, message, type="PayloadRefused", non_retryable=True)


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
        """The payload `encrypt` sealed (or a marker of the server's); PayloadRefused for any
        other."""
        if payload.metadata.get("encoding") != ENCODING:
            if payload.SerializeToString(deterministic=True) in SERVER_MARKERS:
                return payload
            encoding = payload.metadata.get("encoding", b"").decode(errors="replace")
            raise PayloadRefused(
                f"a payload in the clear (encoding {encoding!r}) was refused: every payload"
                " of the network is encrypted with a key of GPGPU_TEMPORAL_PAYLOAD_KEYS, so"
                " this one was written by a process without the key"
            )
        name = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        aead = self._aead.get(name)
        if aead is None and len(name) != len(self._encrypt_id):
            raise PayloadRefused(f"a payload names no key of the network ({name!r})")
        if aead is None:  # retryable: an operator who dropped a key too soon puts it back
            raise PayloadKeyError(
                f"a payload was encrypted with key {name!r}, which is not among"
                " GPGPU_TEMPORAL_PAYLOAD_KEYS (an old key dropped too soon? the workflow's"
                " task is retried until it is listed again)"
            )
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag as err:
            raise PayloadRefused(f"a payload under key {name!r} failed its integrity check") \
                from err
        return Payload.FromString(plain)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.opened(p) for p in payloads]

    def opened(self, payload: Payload) -> Payload:
        """`decrypt`, where a payload it cannot open becomes a REFUSED one that says why:
        the SDK decodes a workflow's whole activation at once, so an error raised here
        would fail that activation, and every retry of it, for the one bad payload (a
        signal from outside would stop the job it was sent to). Raised only when its value
        is read (RefusedPayloadConverter), the error stays with that value: a workflow's
        input or a step's request fails it (PayloadRefused, non-retryable), or its task is
        retried until the key is listed again (PayloadKeyError); a signal's is dropped by
        the SDK, and the workflow goes on."""
        try:
            return self.decrypt(payload)
        except PayloadRefused as refused:
            return Payload(metadata={"encoding": REFUSED}, data=refused.message.encode())
        except PayloadKeyError as missing:
            return Payload(metadata={"encoding": REFUSED, "retryable": b"1"},
                           data=str(missing).encode())


class RefusedPayloadConverter(temporalio.converter.EncodingPayloadConverter):
    """Raises what `PayloadCipher.opened` set aside when the value is asked for; never
    writes a REFUSED payload."""

    @property
    def encoding(self) -> str:
        return REFUSED.decode()

    def to_payload(self, value: object) -> Payload | None:
        return None

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> object:
        why = payload.data.decode(errors="replace")
        if payload.metadata.get("retryable") == b"1":
            raise PayloadKeyError(why)
        raise PayloadRefused(why)


class PayloadConverter(temporalio.converter.CompositePayloadConverter):
    """The SDK's default converters, and RefusedPayloadConverter."""

    def __init__(self) -> None:
        super().__init__(
            *temporalio.converter.DefaultPayloadConverter.default_encoding_payload_converters,
            RefusedPayloadConverter(),
        )


def data_converter(keys: Sequence[bytes]) -> temporalio.converter.DataConverter:
    """The converter for every client, worker and replayer of the network: payloads and
    failures' messages and stack traces encrypted."""
    return dataclasses.replace(
        temporalio.converter.default(),
        payload_codec=PayloadCipher(keys),
        payload_converter_class=PayloadConverter,
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )


def decrypt_history(history: WorkflowHistory, keys: Sequence[bytes]) -> WorkflowHistory:
    """A copy of `history` with every encrypted payload decrypted in place (the failures'
    encoded attributes stay as payloads), to read it: what Temporal keeps in the clear
    (search attributes, headers, the core's markers) stays as it is; PayloadRefused for a
    ciphertext no key opens."""
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
                _decrypt_if_sealed(item, cipher)
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
        _decrypt_if_sealed(message, cipher)
    else:
        _decrypt_all(message, cipher)


def _decrypt_if_sealed(payload: Payload, cipher: PayloadCipher) -> None:
    if payload.metadata.get("encoding") == ENCODING:
        payload.CopyFrom(cipher.decrypt(payload))


def _repeated(field: object) -> bool:
    label = getattr(field, "label", None)
    return bool(label == 3 or getattr(field, "is_repeated", False))  # LABEL_REPEATED
