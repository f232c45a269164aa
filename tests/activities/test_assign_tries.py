"""A GPU step's second try (Temporal's retry after its first timed out) publishes its
assignment only where the first never reached a provider: the control worker died before
it published. A run that reached its provider is never run on it again (the run is lost
and goes elsewhere); staging and upload are tried again there."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.assign import AssignActivities
from activities.guard import Callers
from infra.assignments import AssignmentBoard
from infra.row_cipher import RowCipher
from infra.settings import Settings
from readmodel.schema import ViewDB
from workflows import contracts as c


@pytest.fixture
def board(tmp_path: Path) -> Iterator[AssignmentBoard]:
    db = ViewDB(Settings(home=tmp_path))
    try:
        yield AssignmentBoard(db, RowCipher([secrets.token_bytes(32)]))
    finally:
        db.close()


def step_env(kind: str, attempt: int) -> ActivityEnvironment:
    """Where one try of the step runs, as Temporal would run it."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        ActivityEnvironment.default_info(), workflow_type="JobWorkflow", workflow_id="job-j1",
        workflow_run_id="r1", activity_id=f"{kind}:1:4", activity_type=kind, attempt=attempt,
        task_token=f"token-{attempt}".encode())
    return env


def try_step(acts: AssignActivities, kind: str, request: Any, attempt: int) -> None:
    """Run one try of the step; it ends publishing (complete async)."""
    env = step_env(kind, attempt)
    step = acts.execute_job if kind == c.EXECUTE_JOB else acts.upload_outputs
    with pytest.raises(BaseException) as ended:
        env.run(step, request)
    if isinstance(ended.value, ApplicationError):
        raise ended.value
    assert type(ended.value).__name__ == "_CompleteAsyncError", ended.value


EXECUTE = c.ExecuteRequest("j1", 1, ["true"], [0], 60, provider_id="p1", heartbeat_timeout_s=3.0,
                           outage_grace_s=20.0)
UPLOAD = c.UploadRequest("j1", 1, [], provider_id="p1", heartbeat_timeout_s=3.0)


def test_a_second_try_of_a_run_that_never_reached_its_provider_publishes_it(
        board: AssignmentBoard) -> None:
    acts = AssignActivities(board, Callers(None))
    try_step(acts, c.EXECUTE_JOB, EXECUTE, attempt=2)  # the first died unpublished
    (published,) = board.hand_out("p1")
    assert (published.attempt, published.heartbeat_timeout_s) == (2, 3.0)
    assert published.public()["giveUpAfterS"] == 23.0


def test_a_second_try_of_a_run_its_provider_had_is_refused_as_a_lost_provider(
        board: AssignmentBoard) -> None:
    acts = AssignActivities(board, Callers(None))
    try_step(acts, c.EXECUTE_JOB, EXECUTE, attempt=1)
    assert len(board.hand_out("p1")) == 1  # the agent has it; then nothing hears it
    with pytest.raises(ApplicationError) as refused:
        try_step(acts, c.EXECUTE_JOB, EXECUTE, attempt=2)
    assert (refused.value.type, refused.value.non_retryable) == (c.PROVIDER_SILENT, True)
    assert board.hand_out("p1") == []  # nothing handed out again


def test_an_upload_is_tried_again_on_the_same_provider(board: AssignmentBoard) -> None:
    acts = AssignActivities(board, Callers(None))
    try_step(acts, c.UPLOAD_OUTPUTS, UPLOAD, attempt=1)
    board.hand_out("p1")
    try_step(acts, c.UPLOAD_OUTPUTS, UPLOAD, attempt=2)
    (again,) = board.hand_out("p1")
    assert again.attempt == 2


def test_a_second_try_takes_the_result_its_first_was_reported_but_temporal_never_took(
        board: AssignmentBoard) -> None:
    """The API kept the agent's report and died before it reached Temporal (nor did the
    agent's report tried again reach an API): the run is not lost, its result is taken."""
    acts = AssignActivities(board, Callers(None))
    try_step(acts, c.EXECUTE_JOB, EXECUTE, attempt=1)
    (first,) = board.hand_out("p1")
    ran = c.ExecuteResult(0, False, 2_000, 2_000, "done")
    assert board.finish(first.assignment_id, "completed", dataclasses.asdict(ran))
    assert step_env(c.EXECUTE_JOB, attempt=2).run(acts.execute_job, EXECUTE) == ran
    assert board.hand_out("p1") == []  # not run again
