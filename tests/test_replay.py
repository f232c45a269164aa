"""Committed JobWorkflow histories replay against today's code without nondeterminism.

The histories are recorded on a real network by `python -m tests.replay.record`, one per
scenario: success, failure, the network's check, replicas, a verifier, a cancel, a timeout
with no output, providers failing their stage step, a lost provider. Replay would notice a
change of what the workflow does: the last test changes one step's name and sees every
history refuse it.

The histories are kept as Temporal stored them, every payload encrypted with the public test
key (tests/support/temporal.py) and sealed for its workflow (a step's for that step), and
replay with the network's codec: the same history with its payloads in the clear, as an
outsider without the key would write it, does not replay, nor does it under another workflow
id, nor with one step's result moved to another step of the same type.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.converter import WorkflowSerializationContext
from temporalio.worker import Replayer

import workflows.contracts as c
from infra.payload_codec import PayloadRefused, data_converter, decrypt_history
from tests.support.temporal import TEST_PAYLOAD_KEYS
from workflows.job import JobWorkflow

HISTORIES = sorted((Path(__file__).parent / "replay").glob("*.json"))
NAMESPACE = "default"  # where tests/replay/record.py's network ran: payloads are sealed for it


def replayer() -> Replayer:
    return Replayer(workflows=[JobWorkflow], namespace=NAMESPACE,
                    data_converter=data_converter(TEST_PAYLOAD_KEYS))


def history(path: Path) -> WorkflowHistory:
    """The recorded history, under its workflow's id (its first event names it)."""
    events = WorkflowHistory.from_json("", path.read_text()).events
    return WorkflowHistory(events[0].workflow_execution_started_event_attributes.workflow_id,
                           events)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    result = await replayer().replay_workflow(history(path))
    assert result.replay_failure is None


def test_there_are_histories() -> None:
    assert len(HISTORIES) >= 9, "record them: python -m tests.replay.record"
    for path in HISTORIES:
        text = path.read_text()
        sealed = text.count('"YmluYXJ5L2VuY3J5cHRlZA=="')  # binary/encrypted
        assert sealed, f"{path.name}: not encrypted"
        # Each sealed for its workflow and step (format 3): record again after a format change.
        assert text.count('"gpgpu-payload-format": "Mw=="') == sealed, path.name


async def test_a_history_in_the_clear_does_not_replay() -> None:
    # The codec refuses the workflow's input: the workflow fails at its first task, where
    # the history ran a step.
    plain = decrypt_history(history(HISTORIES[0]), TEST_PAYLOAD_KEYS, NAMESPACE)
    result = await replayer().replay_workflow(plain, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    started = plain.events[0].workflow_execution_started_event_attributes.input.payloads
    own = WorkflowSerializationContext(NAMESPACE, plain.workflow_id)
    with pytest.raises(PayloadRefused, match="in the clear"):
        await data_converter(TEST_PAYLOAD_KEYS).with_context(own).decode(started, [c.JobInput])


@pytest.mark.parametrize("where", ["another workflow id", "another namespace"])
async def test_a_history_under_another_workflow_does_not_replay(where: str) -> None:
    # Its payloads are sealed for the workflow that wrote them: under another id (or in
    # another namespace) its input is refused at the first task, where the history ran a
    # step.
    recorded = history(HISTORIES[0])
    moved = WorkflowHistory(f"{recorded.workflow_id}-copy", recorded.events) \
        if where == "another workflow id" else recorded
    namespace = NAMESPACE if where == "another workflow id" else "elsewhere"
    result = await Replayer(workflows=[JobWorkflow], namespace=namespace,
                            data_converter=data_converter(TEST_PAYLOAD_KEYS)
                            ).replay_workflow(moved, raise_on_replay_failure=False)
    assert "LocalActivity(1)" in str(result.replay_failure)  # its first step (admit) never ran
    assert (await replayer().replay_workflow(recorded)).replay_failure is None


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_a_changed_workflow_does_not_replay(path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Every job waits for GPUs: a workflow that asked for them under another name no longer
    # does what its history did.
    monkeypatch.setattr(c, "ALLOCATE_GPUS", "allocate_gpus_renamed")
    result = await replayer().replay_workflow(history(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "allocate_gpus" in str(result.replay_failure)


async def test_a_steps_result_moved_to_another_step_of_its_type_does_not_replay() -> None:
    # Two replicas each executed: their results are of one type and sealed for the job's
    # workflow, but each for its own step (its activity id). Swapped, the first result read
    # is refused where it is read (PayloadRefused), and the workflow fails there.
    recorded = history(next(p for p in HISTORIES if p.stem.endswith("replicas")))
    scheduled = {e.event_id: e.activity_task_scheduled_event_attributes
                 for e in recorded.events if e.HasField("activity_task_scheduled_event_attributes")}
    executed = [e for e in recorded.events if e.HasField("activity_task_completed_event_attributes")
                and scheduled[e.activity_task_completed_event_attributes.scheduled_event_id]
                .activity_type.name == c.EXECUTE_JOB]
    assert len(executed) >= 2
    ids = [scheduled[e.activity_task_completed_event_attributes.scheduled_event_id].activity_id
           for e in executed[:2]]
    assert ids[0] != ids[1] and all(i.startswith(f"{c.EXECUTE_JOB}:") for i in ids), ids
    events = [copy.deepcopy(e) for e in recorded.events]
    first, second = (next(moved for moved in events if moved.event_id == e.event_id)
                     .activity_task_completed_event_attributes.result for e in executed[:2])
    first_result, second_result = (copy.deepcopy(r.payloads[0]) for r in (first, second))
    first.payloads[0].CopyFrom(second_result)
    second.payloads[0].CopyFrom(first_result)
    result = await replayer().replay_workflow(WorkflowHistory(recorded.workflow_id, events),
                                              raise_on_replay_failure=False)
    # The workflow failed where its history went on to record the run.
    assert "Nondeterminism" in str(result.replay_failure), result.replay_failure
    assert (await replayer().replay_workflow(recorded)).replay_failure is None
    # Failed for the refusal: the first moved result opens at no step but its own.
    with pytest.raises(PayloadRefused, match=f"step {ids[0]!r}.*sealed for another"):
        decrypt_history(WorkflowHistory(recorded.workflow_id, events), TEST_PAYLOAD_KEYS,
                        NAMESPACE)
