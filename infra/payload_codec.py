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

Each payload is sealed for where it belongs (format 3, `gpgpu-payload-format` in its
metadata): its namespace and workflow id, and for a step's payloads that step's activity id,
are AES-GCM's associated data, taken from the serialization context the SDK gives the codec
(`with_context`). A workflow's own payloads (its input and result, signals, queries) are
bound to its id; a child's input and result, and a signal sent to another workflow, to that
workflow's; an activity's (its input, result, heartbeats, failure; remote or local) to its
workflow's id and its own activity id. Our workflows give every step an activity id of its
own, the same on replay and unique within the run (workflows/steps.py StepIds): the SDK
hands the codec the id a workflow passed, none otherwise (the core numbers a step only after
the codec ran). A ciphertext copied from one history into another workflow (a job's input
into JobWorkflow under another id, a job's payload signalled to another job) fails its tag
there, and one copied from one step to another of the same workflow (an earlier attempt's
result used to complete a later attempt's pending step) fails its tag at that step: each is
refused like any unreadable payload. Where the SDK gives no workflow, or an activity no id
(a client's async activity handle by task token, `activity_handle` below gives it both; a
standalone activity; a step scheduled without an id; a plain `decode`), nothing is sealed
(PayloadUnbound) and nothing opens (refused). The binding is to the workflow id, not to one
run of it (the SDK gives the codec no run id): a workflow's own input still opens in a later
run under the same id, and a step's payloads at the same step of a reset's new run (which
schedules its steps under the same ids). Who may run a control step for which job stays
activities/guard.py's concern (activities/control.py).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
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
# Format 3: sealed for one workflow (its namespace and id as associated data) and, for a
# step's payloads, one step of it (its activity id). A payload of another format is refused:
# format 1 was bound to no workflow, format 2 to a workflow but to none of its steps.
FORMAT = "gpgpu-payload-format"
FORMAT_VERSION = b"3"
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
    """A payload to seal where the SDK gave no workflow, or an activity no id of its own: a
    bug of the caller (an async activity handle without `activity_handle`? a step scheduled
    without StepIds?), never sealed for no workflow or no step."""


@dataclasses.dataclass(frozen=True)
class Binding:
    """Where a payload belongs: a workflow, and for a step's payloads that step."""

    namespace: str
    workflow_id: str
    activity_id: str | None = None  # None: the workflow's own payloads

    def where(self) -> str:
        step = f" step {self.activity_id!r}" if self.activity_id is not None else ""
        return f"workflow {self.workflow_id!r}{step} (namespace {self.namespace!r})"


def associated_data(binding: Binding) -> bytes:
    """What a payload is sealed for: each part length-prefixed, so no two bindings meet (a
    step's payloads and the workflow's own are told apart by a part of their own)."""
    parts = [b"gpgpu-temporal-payload", FORMAT_VERSION, binding.namespace.encode(),
             binding.workflow_id.encode()]
    if binding.activity_id is None:
        parts.append(b"workflow")
    else:
        parts += [b"activity", binding.activity_id.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def binding_of(context: SerializationContext) -> Binding | None:
    """Where a payload in this context belongs; None for nowhere: a standalone activity's, a
    Nexus operation's, or an activity's that its workflow gave no id (the SDK then gives the
    workflow's side none, and the activity's side the core's number: they would not meet)."""
    if isinstance(context, WorkflowSerializationContext) and context.workflow_id:
        return Binding(context.namespace, context.workflow_id)
    if (isinstance(context, ActivitySerializationContext) and context.workflow_id
            and context.activity_id):
        return Binding(context.namespace, context.workflow_id, context.activity_id)
    return None


class PayloadCipher(temporalio.converter.PayloadCodec, WithSerializationContext):
    """AES-256-GCM over each whole serialized payload (its metadata too), a fresh nonce each,
    sealed for one workflow or one step of it: the SDK hands each workflow, activity and
    client call a copy bound to where it is (`with_context`); the unbound one seals and
    opens nothing."""

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise PayloadKeyError("a payload cipher needs at least one key")
        if any(len(k) != KEY_BYTES for k in keys):
            raise PayloadKeyError(f"every payload key is {KEY_BYTES} bytes")
        self._encrypt_id = key_id(keys[0])
        self._aead = {key_id(k): AESGCM(k) for k in keys}
        self.binding: Binding | None = None

    def bound(self, binding: Binding | None) -> PayloadCipher:
        """This cipher, sealing and opening for `binding` (the same keys)."""
        bound = copy.copy(self)
        bound.binding = binding if binding is None or binding.workflow_id else None
        return bound

    def for_workflow(self, namespace: str, workflow_id: str) -> PayloadCipher:
        """This cipher, sealing and opening a workflow's own payloads."""
        return self.bound(Binding(namespace, workflow_id))

    def for_step(self, namespace: str, workflow_id: str, activity_id: str) -> PayloadCipher:
        """This cipher, sealing and opening the payloads of one step of a workflow."""
        return self.bound(Binding(namespace, workflow_id, activity_id) if activity_id else None)

    def with_context(self, context: SerializationContext) -> Self:
        bound = copy.copy(self)
        bound.binding = binding_of(context)
        return bound

    def encrypt(self, payload: Payload) -> Payload:
        if self.binding is None:
            raise PayloadUnbound(
                "a payload to encrypt for no workflow or no step: the SDK gave this codec no"
                " workflow, or an activity no id (a handle by task token needs"
                " infra.payload_codec.activity_handle; a step, an id of its own:"
                " workflows/steps.py StepIds)"
            )
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self._encrypt_id].encrypt(
            nonce, payload.SerializeToString(), associated_data(self.binding)
        )
        return Payload(
            metadata={"encoding": ENCODING, "encryption-cipher": CIPHER,
                      KEY_ID: self._encrypt_id.encode(), FORMAT: FORMAT_VERSION},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The payload `encrypt` sealed for this workflow or step (or a marker of the
        server's); PayloadRefused for any other."""
        if payload.metadata.get("encoding") != ENCODING:
            if payload.SerializeToString(deterministic=True) in SERVER_MARKERS:
                return payload
            encoding = payload.metadata.get("encoding", b"").decode(errors="replace")
            raise PayloadRefused(
                f"a payload in the clear (encoding {encoding!r}) was refused: every payload"
                " of the network is encrypted with a key of GPGPU_TEMPORAL_PAYLOAD_KEYS, so"
                " this one was written by a process without the key"
            )
        if self.binding is None:
            raise PayloadRefused("a payload read for no workflow (or for a step with no id)"
                                 " was refused: each is sealed for one workflow or step and"
                                 " opens only there")
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
        if payload.metadata.get(FORMAT) != FORMAT_VERSION:
            written = payload.metadata.get(FORMAT, b"1").decode(errors="replace")
            raise PayloadRefused(
                f"a payload under key {name!r} is of format {written!r}, not"
                f" {FORMAT_VERSION.decode()!r}: sealed for no workflow (format 1) or for no"
                f" step (format 2); refused in {self.binding.where()}"
            )
        try:
            plain = aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:],
                                 associated_data(self.binding))
        except InvalidTag as err:
            raise PayloadRefused(
                f"a payload under key {name!r} failed its integrity check in"
                f" {self.binding.where()}: altered, or sealed for another workflow or another"
                " step and copied here"
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


def activity_handle(client: Client, task_token: bytes, workflow_id: str,
                    activity_id: str) -> AsyncActivityHandle:
    """The handle that heartbeats, completes or fails a workflow's step by its task token,
    its payloads sealed for that workflow and step (its activity id): the SDK gives a handle
    by task token no workflow or step of its own (and seals nothing for none,
    PayloadUnbound)."""
    return client.get_async_activity_handle(task_token=task_token).with_context(
        ActivitySerializationContext(
            namespace=client.namespace, workflow_id=workflow_id, workflow_type=None,
            activity_id=activity_id, activity_type=None, activity_task_queue=None,
            is_local=False,
        )
    )


# The core's marker for a local activity: its `data` (in the clear, the core's) names the
# step's activity id; its `result` and `failure` are sealed for that step.
LOCAL_ACTIVITY_MARKER = "core_local_activity"


def decrypt_history(history: WorkflowHistory, keys: Sequence[bytes],
                    namespace: str) -> WorkflowHistory:
    """A copy of `history` (of a workflow in `namespace`) with every encrypted payload
    decrypted in place (the failures' encoded attributes stay as payloads), to read it: what
    Temporal keeps in the clear (search attributes, headers, the core's markers) stays as it
    is; PayloadRefused for a ciphertext no key opens where it belongs (a step's for that
    step, a child's or a signalled workflow's for theirs)."""
    cipher = PayloadCipher(keys)
    steps: dict[int, str] = {}  # an activity's scheduled event id -> its activity id
    events = []
    for event in history.events:
        opened = type(event)()
        opened.CopyFrom(event)
        _decrypt_all(opened, cipher.bound(_sealed_for(opened, namespace, history.workflow_id,
                                                      steps)))
        events.append(opened)
    return WorkflowHistory(history.workflow_id, events)


def _sealed_for(event: Any, namespace: str, workflow_id: str,
                steps: dict[int, str]) -> Binding | None:
    """Where an event's payloads were sealed: a step's (scheduled, started, completed,
    failed...; a local activity's marker) for that step, recorded in `steps` as it is
    scheduled; a child's start and outcome and a signal sent out for the other workflow;
    every other event's for the history's own workflow."""
    own = Binding(namespace, workflow_id)
    name = event.WhichOneof("attributes")
    if not name:
        return own
    attributes: Any = getattr(event, name)
    if name == "activity_task_scheduled_event_attributes":
        steps[event.event_id] = attributes.activity_id
        return Binding(namespace, workflow_id, attributes.activity_id or None)
    fields = attributes.DESCRIPTOR.fields_by_name
    if name.startswith("activity_task_") and "scheduled_event_id" in fields:
        step = steps.get(attributes.scheduled_event_id)
        return Binding(namespace, workflow_id, step) if step else None
    if name == "marker_recorded_event_attributes":
        if attributes.marker_name != LOCAL_ACTIVITY_MARKER:
            return own
        step = _local_activity_id(attributes)
        return Binding(namespace, workflow_id, step) if step else None
    if "workflow_execution" in fields and attributes.HasField("workflow_execution"):
        workflow_id = attributes.workflow_execution.workflow_id
    elif name == "start_child_workflow_execution_initiated_event_attributes":
        workflow_id = attributes.workflow_id
    else:
        return own
    return Binding(getattr(attributes, "namespace", "") or namespace, workflow_id)


def _local_activity_id(marker: Any) -> str:
    """The activity id the core wrote in a local activity's marker; "" where none is read."""
    data = marker.details.get("data")
    if data is None or not data.payloads:
        return ""
    try:
        found = json.loads(data.payloads[0].data)
    except ValueError:
        return ""
    step = found.get("activity_id") if isinstance(found, dict) else None
    return step if isinstance(step, str) else ""


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
