"""Committed JobWorkflow histories replay against today's code without nondeterminism.

The histories are recorded on a real network by `python -m tests.replay.record`, one per
scenario: success, failure, the network's check, replicas, a verifier, a cancel, a timeout
with no output, providers failing their stage step, a lost provider. Replay would notice a
change of what the workflow does: the last test changes one step's name and sees every
history refuse it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

import workflows.contracts as c
from workflows.job import JobWorkflow

HISTORIES = sorted((Path(__file__).parent / "replay").glob("*.json"))


def history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"job-{path.stem}", path.read_text())


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    result = await Replayer(workflows=[JobWorkflow]).replay_workflow(history(path))
    assert result.replay_failure is None


def test_there_are_histories() -> None:
    assert len(HISTORIES) >= 9, "record them: python -m tests.replay.record"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_a_changed_workflow_does_not_replay(path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Every job waits for GPUs: a workflow that asked for them under another name no longer
    # does what its history did.
    monkeypatch.setattr(c, "ALLOCATE_GPUS", "allocate_gpus_renamed")
    result = await Replayer(workflows=[JobWorkflow]).replay_workflow(
        history(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "allocate_gpus" in str(result.replay_failure)
