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
before it started, passes decoding as it is (SERVER_MARKERS).

Each payload is sealed for the workflow it belongs to: its namespace and workflow id are
AES-GCM's associated data (format 2, `gpgpu-payload-format` in its metadata), taken from the
serialization context the SDK gives the codec (`with_context`): a workflow's own payloads,
its activities' (inputs, results, heartbeats, failures) and its queries' are bound to its
id; a child's input and result, and a signal sent to another workflow, to that workflow's.
A ciphertext copied from one history into another workflow (a job's input into JobWorkflow
under another id, a job's payload signalled to another job) fails its tag there and is
refused like any unreadable payload. Where the SDK gives no workflow (a client's async
activity handle by task token, `activity_handle` below gives it one; a standalone
activity; a plain `decode`), nothing is sealed (PayloadUnbound) and nothing opens
(refused): no ciphertext is bound to no workflow. The binding is to the workflow id, not
to its run or to one activity: within one workflow id a payload may still be moved (to a
later run under the same id, to another of its steps), and who may run a control step for
which job stays activities/guard.py's concern (activities/control.py).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any, Self

import temporalio.converter
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import AsyncActivityHandle, Client, WorkflowHistory
from temporalio.converter import (
    ActivitySerializationContext,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)
from temporalio.exceptions import ApplicationError

ENCODING = b"binary/encrypted"
CIPHER = b"AES-256-GCM"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12
# Format 2: sealed for one workflow (its namespace and id as associated data). A payload
# without it (format 1, bound to no workflow) is refused.
FORMAT = "gpgpu-payload-format"
FORMAT_VERSION = b"2"
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


class PayloadUnbound(ValueError):
    """A payload to seal where the SDK gave no workflow: a bug of the caller (an async
    activity handle without `activity_handle`?), never sealed for no workflow."""


def associated_data(namespace: str, workflow_id: str) -> bytes:
    """What a payload is sealed for: each part length-prefixed, so no two bindings meet."""
    parts = [b"gpgpu-temporal-payload", FORMAT_VERSION, namespace.encode(), workflow_id.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def workflow_of(context: SerializationContext) -> tuple[str, str] | None:
    """(namespace, workflow id) that a payload in this context belongs to; None for none (a
    standalone activity's, a Nexus operation's)."""
    if (isinstance(context, WorkflowSerializationContext | ActivitySerializationContext)
            and context.workflow_id):
        return context.namespace, context.workflow_id
    return None


class PayloadCipher(temporalio.converter.PayloadCodec, WithSerializationContext):
    """AES-256-GCM over each whole serialized payload (its metadata too), a fresh nonce each,
    sealed for one workflow: the SDK hands each workflow, activity and client call a copy
    bound to its workflow (`with_context`); the unbound one seals and opens nothing."""

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise PayloadKeyError("a payload cipher needs at least one key")
        if any(len(k) != KEY_BYTES for k in keys):
            raise PayloadKeyError(f"every payload key is {KEY_BYTES} bytes")
        self._encrypt_id = key_id(keys[0])
        self._aead = {key_id(k): AESGCM(k) for k in keys}
        self.workflow: tuple[str, str] | None = None  # (namespace, workflow id)

    def for_workflow(self, namespace: str, workflow_id: str) -> PayloadCipher:
        """This cipher, sealing and opening for one workflow (the same keys)."""
        bound = copy.copy(self)
        bound.workflow = (namespace, workflow_id) if workflow_id else None
        return bound

    def with_context(self, context: SerializationContext) -> Self:
        bound = copy.copy(self)
        bound.workflow = workflow_of(context)
        return bound

    def encrypt(self, payload: Payload) -> Payload:
        if self.workflow is None:
            raise PayloadUnbound(
                "a payload to encrypt for no workflow: the SDK gave this codec no workflow"
                " (a handle by task token needs infra.payload_codec.activity_handle)"
            )
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self._encrypt_id].encrypt(
            nonce, payload.SerializeToString(), associated_data(*self.workflow)
        )
        return Payload(
            metadata={"encoding": ENCODING, "encryption-cipher": CIPHER,
                      KEY_ID: self._encrypt_id.encode(), FORMAT: FORMAT_VERSION},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The payload `encrypt` sealed for this workflow (or a marker of the server's);
        PayloadRefused for any other."""
        if payload.metadata.get("encoding") != ENCODING:
            if payload.SerializeToString(deterministic=True) in SERVER_MARKERS:
                return payload
            encoding = payload.metadata.get("encoding", b"").decode(errors="replace")
            raise PayloadRefused(
                f"a payload in the clear (encoding {encoding!r}) was refused: every payload"
                " of the network is encrypted with a key of GPGPU_TEMPORAL_PAYLOAD_KEYS, so"
                " this one was written by a process without the key"
            )
        if self.workflow is None:
            raise PayloadRefused("a payload read for no workflow was refused: each is sealed"
                                 " for one workflow and opens only there")
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
        namespace, workflow_id = self.workflow
        if payload.metadata.get(FORMAT) != FORMAT_VERSION:
            raise PayloadRefused(
                f"a payload under key {name!r} is sealed for no workflow (format"
                f" {payload.metadata.get(FORMAT, b'1').decode(errors='replace')!r}, not"
                f" {FORMAT_VERSION.decode()!r}): refused in workflow {workflow_id!r}"
            )
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:],
                                 associated_data(namespace, workflow_id))
        except InvalidTag as err:
            raise PayloadRefused(
                f"a payload under key {name!r} failed its integrity check in workflow"
                f" {workflow_id!r} (namespace {namespace!r}): altered, or sealed for another"
                " workflow and copied here"
            ) from err
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


def activity_handle(client: Client, task_token: bytes, workflow_id: str) -> AsyncActivityHandle:
    """The handle that heartbeats, completes or fails a workflow's activity by its task
    token, its payloads sealed for that workflow: the SDK gives a handle by task token no
    workflow of its own (and seals nothing for none, PayloadUnbound)."""
    return client.get_async_activity_handle(task_token=task_token).with_context(
        ActivitySerializationContext(
            namespace=client.namespace, workflow_id=workflow_id, workflow_type=None,
            activity_id=None, activity_type=None, activity_task_queue=None, is_local=False,
        )
    )


def decrypt_history(history: WorkflowHistory, keys: Sequence[bytes],
                    namespace: str) -> WorkflowHistory:
    """A copy of `history` (of a workflow in `namespace`) with every encrypted payload
    decrypted in place (the failures' encoded attributes stay as payloads), to read it: what
    Temporal keeps in the clear (search attributes, headers, the core's markers) stays as it
    is; PayloadRefused for a ciphertext no key opens for the workflow it belongs to (a
    child's or a signalled workflow's for theirs)."""
    cipher = PayloadCipher(keys)
    events = []
    for event in history.events:
        opened = type(event)()
        opened.CopyFrom(event)
        _decrypt_all(opened, cipher.for_workflow(*_sealed_for(opened, namespace,
                                                             history.workflow_id)))
        events.append(opened)
    return WorkflowHistory(history.workflow_id, events)


def _sealed_for(event: Message, namespace: str, workflow_id: str) -> tuple[str, str]:
    """The workflow an event's payloads were sealed for: a child's start and outcome and a
    signal sent out name the other workflow; every other event is the history's own."""
    name = event.WhichOneof("attributes")
    if not name:
        return namespace, workflow_id
    attributes: Any = getattr(event, name)
    if ("workflow_execution" in attributes.DESCRIPTOR.fields_by_name
            and attributes.HasField("workflow_execution")):
        workflow_id = attributes.workflow_execution.workflow_id
    elif name == "start_child_workflow_execution_initiated_event_attributes":
        workflow_id = attributes.workflow_id
    else:
        return namespace, workflow_id
    return (getattr(attributes, "namespace", "") or namespace), workflow_id


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
