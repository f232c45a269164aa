"""Temporal payloads are encrypted with the first key, opened by any listed key, each sealed
for one workflow (its namespace and id) and a step's for that step (its activity id too); a
payload in the clear, under another key, altered or sealed for another workflow or step is
refused (a non-retryable ApplicationError, so the workflow or step given it fails at once)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
import temporalio.converter
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.converter import (
    ActivitySerializationContext,
    DataConverter,
    WorkflowSerializationContext,
)
from temporalio.exceptions import ApplicationError

from infra.payload_codec import (
    REFUSED,
    PayloadCipher,
    PayloadConverter,
    PayloadKeyError,
    PayloadRefused,
    PayloadUnbound,
    decrypt_history,
    parse_keys,
)
from infra.payload_codec import data_converter as network_converter
from infra.settings import Settings

OLD, NEW = secrets.token_bytes(32), secrets.token_bytes(32)
JOB = WorkflowSerializationContext("default", "job-a")  # the workflow most payloads are for


def cipher_for(keys: list[bytes]) -> PayloadCipher:
    """The codec as the SDK hands it to a workflow (job-a) and its activities."""
    return PayloadCipher(keys).with_context(JOB)


def data_converter(keys: list[bytes]) -> DataConverter:
    return network_converter(keys).with_context(JOB)


def step_of(workflow_id: str, namespace: str = "default",
            activity_id: str | None = "execute_job:1:7",
            is_local: bool = False) -> ActivitySerializationContext:
    """What the SDK gives a step a workflow scheduled (on either side of it)."""
    return ActivitySerializationContext(
        namespace=namespace, workflow_id=workflow_id, workflow_type="JobWorkflow",
        activity_id=activity_id, activity_type="execute_job", activity_task_queue="control",
        is_local=is_local)


def payload(text: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text)


async def refused_by(cipher: PayloadCipher, payloads: list[Payload]) -> None:
    """Decode as the SDK does: the codec, then the converter (where a refusal is raised);
    the strict `decrypt` refuses the same payload with the same words."""
    decoded = await cipher.decode(payloads)
    try:
        PayloadConverter().from_payloads(decoded)
    except PayloadRefused as refused:
        strict = [e.message for e in map(strict_refusal(cipher), payloads) if e]
        assert strict == [refused.message], (strict, refused.message)
        raise


def strict_refusal(cipher: PayloadCipher) -> Callable[[Payload], PayloadRefused | None]:
    def refusal(p: Payload) -> PayloadRefused | None:
        try:
            cipher.decrypt(p)
        except PayloadRefused as err:
            return err
        return None
    return refusal


async def test_a_payload_is_ciphertext_and_opens_again() -> None:
    cipher = cipher_for([NEW])
    (sealed,) = await cipher.encode([payload(b'{"env": "tok-secret"}')])
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    assert b"tok-secret" not in sealed.SerializeToString()
    (opened,) = await cipher.decode([sealed])
    assert opened == payload(b'{"env": "tok-secret"}')
    (again,) = await cipher.encode([payload(b'{"env": "tok-secret"}')])
    assert again.data != sealed.data  # a fresh nonce each time


async def test_rotation_the_first_key_encrypts_and_every_listed_key_decrypts() -> None:
    (by_old,) = await cipher_for([OLD]).encode([payload(b"written before the rotation")])
    rotated = cipher_for([NEW, OLD])
    assert (await rotated.decode([by_old]))[0].data == b"written before the rotation"
    (by_new,) = await rotated.encode([payload(b"after")])
    assert (await cipher_for([NEW]).decode([by_new]))[0].data == b"after"
    with pytest.raises(PayloadKeyError, match="not among GPGPU_TEMPORAL_PAYLOAD_KEYS"):
        cipher_for([OLD]).decrypt(by_new)
    # Once the old key is dropped, what it wrote no longer opens; retryable (not a refusal
    # that fails the workflow): a key dropped too soon is put back and the task retried.
    # Raised where the value is read, as a refusal is.
    (set_aside,) = await cipher_for([NEW]).decode([by_old])
    with pytest.raises(PayloadKeyError, match="not among GPGPU_TEMPORAL_PAYLOAD_KEYS") as err:
        PayloadConverter().from_payloads([set_aside])
    assert not isinstance(err.value, ApplicationError)


async def test_a_payload_sealed_for_one_workflow_opens_there_and_nowhere_else() -> None:
    (sealed,) = await cipher_for([NEW]).encode([payload(b'{"job_id": "a"}')])
    assert sealed.metadata["gpgpu-payload-format"] == b"3"
    # The same workflow opens its own payloads (its input, result, signals, queries).
    assert await PayloadCipher([NEW]).with_context(JOB).decode([sealed]) == [
        payload(b'{"job_id": "a"}')]
    # Copied into another workflow, the same id in another namespace, or into one of the
    # workflow's own steps: refused.
    for other in (WorkflowSerializationContext("default", "job-b"), step_of("job-b"),
                  WorkflowSerializationContext("staging", "job-a"), step_of("job-a", "staging"),
                  WorkflowSerializationContext("default", "job-a "), step_of("job-a")):
        with pytest.raises(PayloadRefused, match="sealed for another workflow or another step"):
            await refused_by(PayloadCipher([NEW]).with_context(other), [sealed])


async def test_a_steps_payload_sealed_for_one_activity_id_opens_at_no_other_step() -> None:
    # Attempt 1's execute result, as the history holds it, used to complete attempt 2's
    # pending execute step of the same job (its activity id, shown by `describe`): refused.
    earlier, pending = step_of("job-a", activity_id="execute_job:1:7"), step_of(
        "job-a", activity_id="execute_job:2:15")
    result = payload(b'{"exit_code": 0, "gpu_ms": 3600000}')
    (sealed,) = await PayloadCipher([NEW]).with_context(earlier).encode([result])
    assert sealed.metadata["gpgpu-payload-format"] == b"3"
    # The step it was sealed for opens it, on either side: the workflow's and the
    # activity's (and the API's handle: activity_handle gives it the same context).
    assert await PayloadCipher([NEW]).with_context(earlier).decode([sealed]) == [result]
    assert PayloadCipher([NEW]).for_step("default", "job-a", "execute_job:1:7").decrypt(
        sealed) == result
    # Another step of the same workflow (a later attempt's, one whose id extends or cuts
    # this one's, a local step's), or the workflow's own payloads: refused.
    for other in (pending, step_of("job-a", activity_id="execute_job:1:70"),
                  step_of("job-a", activity_id="execute_job:1:"),
                  step_of("job-a", activity_id="execute_job:1:8", is_local=True), JOB):
        with pytest.raises(PayloadRefused, match="sealed for another workflow or another step"):
            await refused_by(PayloadCipher([NEW]).with_context(other), [sealed])
    with pytest.raises(PayloadRefused, match="in workflow 'job-a' step 'execute_job:2:15'"):
        PayloadCipher([NEW]).with_context(pending).decrypt(sealed)
    # As the SDK decodes it, with its dataclass: the refusal is raised, not a value.
    converter = network_converter([NEW])
    with pytest.raises(PayloadRefused):
        await converter.with_context(pending).decode([sealed], [dict])
    assert await converter.with_context(earlier).decode([sealed], [dict]) == [
        {"exit_code": 0, "gpu_ms": 3600000}]


async def sealed_failure(converter: temporalio.converter.DataConverter,
                         error: Exception) -> tuple[Failure, Failure]:
    """The failure as `converter` seals it, and a copy to move elsewhere (decoding opens a
    failure in place)."""
    failure = Failure()
    await converter.encode_failure(error, failure)
    copied = Failure()
    copied.CopyFrom(failure)
    return failure, copied


async def test_a_steps_failure_and_heartbeat_are_sealed_for_that_step() -> None:
    converter = network_converter([NEW])
    earlier, pending = (converter.with_context(step_of("job-a", activity_id=a))
                        for a in ("execute_job:1:7", "execute_job:2:15"))
    (beat,) = await earlier.encode(["downloaded 3 of 4"])
    assert await earlier.decode([beat], [str]) == ["downloaded 3 of 4"]
    with pytest.raises(PayloadRefused, match="step 'execute_job:2:15'"):
        await pending.decode([beat], [str])
    failure, copied = await sealed_failure(earlier, ApplicationError("disk full", "detail"))
    assert str(await earlier.decode_failure(failure)) == "disk full"
    with pytest.raises(PayloadRefused, match="sealed for another workflow or another step"):
        await pending.decode_failure(copied)


async def test_a_value_and_a_failure_copied_to_another_workflow_are_refused() -> None:
    converter = network_converter([NEW])
    a, b = (converter.with_context(WorkflowSerializationContext("default", w))
            for w in ("job-a", "job-b"))
    (sealed,) = await a.encode(["grant sig=tok-secret"])
    assert await a.decode([sealed], [str]) == ["grant sig=tok-secret"]
    with pytest.raises(PayloadRefused, match="in workflow 'job-b'"):
        await b.decode([sealed], [str])
    # A failure: its message (and stack) do not open elsewhere; its details are refused.
    failure, copied = await sealed_failure(a, ApplicationError("step failed: tok-secret",
                                                               "detail"))
    opened = await a.decode_failure(failure)
    assert str(opened) == "step failed: tok-secret"
    assert opened.details == ("detail",)  # type: ignore[attr-defined]
    with pytest.raises(PayloadRefused, match="sealed for another workflow"):
        await b.decode_failure(copied)
    del copied.application_failure_info.details.payloads[:]
    assert str(await b.decode_failure(copied)) == "Encoded failure"


async def test_where_the_sdk_gives_no_workflow_nothing_is_sealed_and_nothing_opens() -> None:
    (sealed,) = await cipher_for([NEW]).encode([payload(b'"for job-a"')])
    (step,) = await PayloadCipher([NEW]).with_context(step_of("job-a")).encode(
        [payload(b'"for a step of job-a"')])
    standalone = ActivitySerializationContext(
        namespace="default", workflow_id=None, workflow_type=None, activity_id="act-1",
        activity_type="settle_job", activity_task_queue="control", is_local=False)
    # The workflow's side of a step scheduled with no activity id: the SDK gives none (the
    # core numbers it after the codec ran), and the activity's side would get a number.
    no_id = step_of("job-a", activity_id=None)
    for unbound in (PayloadCipher([NEW]), PayloadCipher([NEW]).with_context(standalone),
                    PayloadCipher([NEW]).for_workflow("default", ""),
                    PayloadCipher([NEW]).with_context(no_id),
                    PayloadCipher([NEW]).with_context(step_of("job-a", activity_id="")),
                    PayloadCipher([NEW]).for_step("default", "job-a", "")):
        with pytest.raises(PayloadUnbound, match="no workflow"):
            await unbound.encode([payload(b'"anything"')])
        for opened in (sealed, step):
            with pytest.raises(PayloadRefused, match="for no workflow"):
                await refused_by(unbound, [opened])
    with pytest.raises(PayloadUnbound):  # the converter as a client holds it, before a call
        await network_converter([NEW]).encode(["x"])


def format_2_data(namespace: str, workflow_id: str) -> bytes:
    """Format 2's associated data: the workflow alone, for every payload of it."""
    parts = [b"gpgpu-temporal-payload", b"2", namespace.encode(), workflow_id.encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


@pytest.mark.parametrize("how", ["written by an earlier version", "relabelled"])
async def test_a_payload_sealed_for_no_workflow_is_refused(how: str) -> None:
    # Format 1 (before payloads were bound to their workflow): a tag with no associated
    # data. Accepting it anywhere would let such a ciphertext be copied into any workflow.
    cipher = cipher_for([NEW])
    (sealed,) = await cipher.encode([payload(b'"x"')])
    if how == "written by an earlier version":
        nonce = secrets.token_bytes(12)
        sealed.data = nonce + AESGCM(NEW).encrypt(nonce, payload(b'"x"').SerializeToString(),
                                                   None)
    del sealed.metadata["gpgpu-payload-format"]
    with pytest.raises(PayloadRefused, match="sealed for no workflow"):
        await refused_by(cipher, [sealed])


@pytest.mark.parametrize("where", ["the workflow", "a step"])
async def test_a_payload_sealed_for_its_workflow_but_no_step_is_refused(where: str) -> None:
    # Format 2 (before a step's payloads were bound to the step): sealed for the workflow
    # alone, so one step's result opened at any step of it. Refused, by its label and, were
    # it relabelled 3, by its tag.
    nonce = secrets.token_bytes(12)
    sealed = Payload(
        metadata={"encoding": b"binary/encrypted", "encryption-cipher": b"AES-256-GCM",
                  "encryption-key-id": (await cipher_for([NEW]).encode([payload(b"x")]))[0]
                  .metadata["encryption-key-id"], "gpgpu-payload-format": b"2"},
        data=nonce + AESGCM(NEW).encrypt(nonce, payload(b'"x"').SerializeToString(),
                                         format_2_data("default", "job-a")))
    cipher = PayloadCipher([NEW]).with_context(JOB if where == "the workflow"
                                               else step_of("job-a"))
    with pytest.raises(PayloadRefused, match="of format '2', not '3'"):
        await refused_by(cipher, [sealed])
    sealed.metadata["gpgpu-payload-format"] = b"3"
    with pytest.raises(PayloadRefused, match="integrity"):
        await refused_by(cipher, [sealed])


async def test_a_history_is_read_with_each_payload_for_the_workflow_it_was_sealed_for() -> None:
    # A parent's history holds its child's input and result, sealed for the child.
    parent, child = (PayloadCipher([NEW]).for_workflow("default", w)
                     for w in ("job-a", "canary-a-p1"))
    events = [HistoryEvent(event_type=EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
              HistoryEvent(event_type=EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED),
              HistoryEvent(event_type=EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED)]
    started = events[0].workflow_execution_started_event_attributes
    started.input.payloads.append(parent.encrypt(payload(b'"job input"')))
    initiated = events[1].start_child_workflow_execution_initiated_event_attributes
    initiated.workflow_id = "canary-a-p1"
    initiated.input.payloads.append(child.encrypt(payload(b'"canary input"')))
    completed = events[2].child_workflow_execution_completed_event_attributes
    completed.workflow_execution.workflow_id = "canary-a-p1"
    completed.result.payloads.append(child.encrypt(payload(b'"canary result"')))

    plain = decrypt_history(WorkflowHistory("job-a", events), [NEW], "default")
    assert [p.data for p in (plain.events[0].workflow_execution_started_event_attributes.input
                             .payloads[0],
                             plain.events[1].start_child_workflow_execution_initiated_event_attributes
                             .input.payloads[0],
                             plain.events[2].child_workflow_execution_completed_event_attributes
                             .result.payloads[0])] == [b'"job input"', b'"canary input"',
                                                        b'"canary result"']
    with pytest.raises(PayloadRefused, match="in workflow 'job-b'"):
        decrypt_history(WorkflowHistory("job-b", events), [NEW], "default")


def step_events(first: str, second: str) -> list[HistoryEvent]:
    """A step scheduled and completed (its input and result sealed for `first`) and a local
    step's marker (its result sealed for `second`), as the history of job-a holds them."""
    step, local = (PayloadCipher([NEW]).for_step("default", "job-a", a) for a in (first, second))
    scheduled = HistoryEvent(event_id=5, event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    scheduled.activity_task_scheduled_event_attributes.activity_id = "execute_job:1:3"
    scheduled.activity_task_scheduled_event_attributes.input.payloads.append(
        step.encrypt(payload(b'"request"')))
    completed = HistoryEvent(event_id=7, event_type=EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    completed.activity_task_completed_event_attributes.scheduled_event_id = 5
    completed.activity_task_completed_event_attributes.result.payloads.append(
        step.encrypt(payload(b'"result"')))
    marker = HistoryEvent(event_id=9, event_type=EventType.EVENT_TYPE_MARKER_RECORDED)
    attributes = marker.marker_recorded_event_attributes
    attributes.marker_name = "core_local_activity"
    attributes.details["data"].payloads.append(payload(
        b'{"seq":4,"attempt":1,"activity_id":"record_job_step:1:4","activity_type":"x"}'))
    attributes.details["result"].payloads.append(local.encrypt(payload(b'"recorded"')))
    return [scheduled, completed, marker]


def test_a_history_is_read_with_each_steps_payloads_for_that_step() -> None:
    plain = decrypt_history(WorkflowHistory(
        "job-a", step_events("execute_job:1:3", "record_job_step:1:4")), [NEW], "default")
    scheduled, completed, marker = plain.events
    assert [scheduled.activity_task_scheduled_event_attributes.input.payloads[0].data,
            completed.activity_task_completed_event_attributes.result.payloads[0].data,
            marker.marker_recorded_event_attributes.details["result"].payloads[0].data] == [
        b'"request"', b'"result"', b'"recorded"']
    # A step's payloads sealed for another step of the same workflow do not open there.
    for first, second in (("execute_job:2:8", "record_job_step:1:4"),
                          ("execute_job:1:3", "record_job_step:1:5")):
        with pytest.raises(PayloadRefused, match="sealed for another workflow or another step"):
            decrypt_history(WorkflowHistory("job-a", step_events(first, second)), [NEW],
                            "default")


@pytest.mark.parametrize("where", ["last byte", "nonce", "key id"])
async def test_a_tampered_payload_is_refused(where: str) -> None:
    (sealed,) = await cipher_for([NEW, OLD]).encode([payload(b"grant")])
    if where == "last byte":
        sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    elif where == "nonce":
        sealed.data = bytes([sealed.data[0] ^ 1]) + sealed.data[1:]
    else:  # named as the other listed key: that key does not open it
        (other,) = await cipher_for([OLD]).encode([payload(b"x")])
        sealed.metadata["encryption-key-id"] = other.metadata["encryption-key-id"]
    with pytest.raises(PayloadRefused, match="integrity"):
        await refused_by(cipher_for([NEW, OLD]), [sealed])


@pytest.mark.parametrize("plain", [
    Payload(metadata={"encoding": b"json/plain"}, data=b'{"job_id": "j1"}'),
    Payload(metadata={"encoding": b"binary/null"}),
    Payload(data=b"no metadata at all"),
    # Says it is encrypted, carries no key id and no ciphertext.
    Payload(metadata={"encoding": b"binary/encrypted"}, data=b'{"job_id": "j1"}'),
])
async def test_a_payload_not_encrypted_by_the_network_is_refused(plain: Payload) -> None:
    cipher = cipher_for([NEW, OLD])
    with pytest.raises(PayloadRefused) as refused:
        await refused_by(cipher, [(await cipher.encode([payload(b'"ok"')]))[0], plain])
    # What the SDK needs to fail the workflow (or step) at once rather than retry its task.
    assert isinstance(refused.value, ApplicationError)
    assert refused.value.non_retryable and refused.value.type == "PayloadRefused"
    assert isinstance(refused.value, PayloadKeyError)  # what ops/cli.py reports plainly


async def test_the_servers_marker_for_an_activity_cancelled_before_it_started_passes() -> None:
    # Temporal's history service writes these details itself when a workflow cancels an
    # activity no worker has started (a check run still waiting for a GPU): refusing them
    # failed the job's workflow.
    marker = payload(b'"ACTIVITY_ID_NOT_STARTED"')
    assert await cipher_for([NEW]).decode([marker]) == [marker]
    failure = Failure()
    failure.canceled_failure_info.details.payloads.add().CopyFrom(marker)
    cancelled = await data_converter([NEW]).decode_failure(failure)
    assert cancelled.details == ("ACTIVITY_ID_NOT_STARTED",)  # type: ignore[attr-defined]
    # Only that exact payload: the same words with another encoding or more bytes are refused.
    for near in (payload(b'"ACTIVITY_ID_NOT_STARTED" '), payload(b'"ACTIVITY_ID_UNKNOWN"'),
                 Payload(metadata={"encoding": b"json/plain", "x": b"1"},
                         data=b'"ACTIVITY_ID_NOT_STARTED"')):
        with pytest.raises(PayloadRefused, match="in the clear"):
            await refused_by(cipher_for([NEW]), [near])


async def test_a_refused_payload_fails_only_where_its_value_is_read() -> None:
    # The codec hands the SDK a REFUSED payload in its place (the SDK decodes a workflow's
    # whole activation at once: one bad signal must not fail the rest); reading its value
    # raises, writing one is impossible.
    cipher = cipher_for([NEW])
    (good,) = await cipher.encode([payload(b'"fine"')])
    opened, refused = await cipher.decode([good, payload(b'"forged"')])
    assert opened == payload(b'"fine"')
    assert refused.metadata["encoding"] == REFUSED and b"forged" not in refused.data
    assert PayloadConverter().from_payloads([opened]) == ["fine"]
    with pytest.raises(PayloadRefused, match="in the clear"):
        PayloadConverter().from_payloads([refused], [str])
    assert PayloadConverter().to_payloads(["x"])[0].metadata["encoding"] == b"json/plain"


async def test_the_converter_refuses_a_plaintext_value_and_failure() -> None:
    converter = data_converter([NEW])
    plain = temporalio.converter.default()
    with pytest.raises(PayloadRefused, match="in the clear"):
        await converter.decode(await plain.encode(["from outside"]), [str])
    failure = Failure()
    await plain.encode_failure(RuntimeError("details"), failure)
    failure.application_failure_info.details.payloads.add().CopyFrom(
        (await plain.encode(["forged detail"]))[0])
    with pytest.raises(PayloadRefused):
        await converter.decode_failure(failure)


async def test_the_converter_encrypts_values_and_failure_messages() -> None:
    converter = data_converter([NEW])
    (sealed,) = await converter.encode(["tok-secret"])
    assert b"tok-secret" not in sealed.SerializeToString()
    assert await converter.decode([sealed], [str]) == ["tok-secret"]
    failure = Failure()
    await converter.encode_failure(RuntimeError("grant sig=tok-secret"), failure)
    assert b"tok-secret" not in failure.SerializeToString()
    assert "tok-secret" in str(await converter.decode_failure(failure))


def test_keys_from_the_setting_name_the_bad_entry() -> None:
    assert parse_keys(f"{NEW.hex()}, {OLD.hex()}") == [NEW, OLD]
    for bad in ("", "zz" * 32, NEW.hex()[:-2], f"{NEW.hex()},"):
        with pytest.raises(PayloadKeyError, match="GPGPU_TEMPORAL_PAYLOAD_KEYS"):
            parse_keys(bad)


def test_the_embedded_network_makes_a_private_key_and_production_must_be_given_one(
    tmp_path: Path,
) -> None:
    made = Settings(home=tmp_path).payload_keys
    path = tmp_path / "temporal-payload.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert Settings(home=tmp_path).payload_keys == made  # the same key for every process
    with pytest.raises(PayloadKeyError, match="GPGPU_TEMPORAL_PAYLOAD_KEYS is not set"):
        Settings(home=tmp_path / "prod", event_store="postgres").payload_keys  # noqa: B018
    given = Settings(home=tmp_path, event_store="postgres",
                     temporal_payload_keys=f"{NEW.hex()},{OLD.hex()}")
    assert given.payload_keys == [NEW, OLD]
    assert NEW.hex() not in repr(given)
