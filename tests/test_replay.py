"""Committed JobWorkflow histories replay against today's code without nondeterminism."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.job import JobWorkflow

HISTORIES = sorted((Path(__file__).parent / "replay").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"job-{path.stem}", path.read_text())
    result = await Replayer(workflows=[JobWorkflow]).replay_workflow(history)
    assert result.replay_failure is None


def test_there_are_histories() -> None:
    assert HISTORIES, "commit at least one recorded history under tests/replay/"
