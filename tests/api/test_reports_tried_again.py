"""A provider's report tried again on a finished assignment (api/assignments.py complete,
fail) delivers what was kept once more and changes nothing: not after a reset, not during
a Temporal blip, not a result held for a reset's new run.

The provider API's handlers run here against a real board (SQLite) and a fake Temporal
whose every answer the test chooses; each test starts from a step whose result Temporal
took, and a rogue provider then tries to change it: what a reset's new run would take
(AssignmentBoard.adopt) must be what Temporal recorded. (Found by a review of the change
that made a report tried again deliver once more; each attack here worked against it.)
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import HTTPException
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api import assignments as api
from api.dispatch import Dispatch
from infra.assignments import AssignmentBoard
from infra.row_cipher import RowCipher
from infra.settings import Settings
from readmodel.schema import ViewDB


class FakeTemporal:
    """Answers each step's RPC as the test says; records what was delivered."""

    namespace = "default"

    def __init__(self) -> None:
        self.answer: RPCStatusCode | None = RPCStatusCode.NOT_FOUND  # None: taken
        self.latest_run = "r1"
        self.delivered: list[tuple[bytes, str, Any]] = []

    def get_async_activity_handle(self, task_token: bytes) -> Any:
        temporal = self

        class Handle:
            def with_context(self, _ctx: Any) -> Handle:
                return self

            async def _call(self, what: str, value: Any) -> None:
                if temporal.answer is not None:
                    raise RPCError("fake", temporal.answer, b"")
                temporal.delivered.append((task_token, what, value))

            async def complete(self, result: Any) -> None:
                await self._call("complete", result)

            async def fail(self, error: Any) -> None:
                await self._call("fail", error)

            async def report_cancellation(self, *_: Any) -> None:
                await self._call("cancel", None)

        return Handle()

    def get_workflow_handle(self, _wid: str) -> Any:
        temporal = self

        class WF:
            async def describe(self) -> Any:
                return SimpleNamespace(run_id=temporal.latest_run,
                                       status=WorkflowExecutionStatus.RUNNING)

        return WF()


class Req:
    def __init__(self, body: dict[str, Any]) -> None:
        self.headers = {"authorization": "Bearer k"}
        self._raw = json.dumps(body).encode()

    async def body(self) -> bytes:
        return self._raw


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[AssignmentBoard, Dispatch, Any, FakeTemporal]]:
    db = ViewDB(Settings(home=tmp_path))
    try:
        board = AssignmentBoard(db, RowCipher([secrets.token_bytes(32)]))
        temporal = FakeTemporal()

        async def authenticate(_token: str, fresh: bool = False) -> Any:
            return SimpleNamespace(admin=False, provider_ids={"p1"},
                                   has=lambda scope: scope == "provider")

        services = SimpleNamespace(auth=SimpleNamespace(authenticate=authenticate),
                                   temporal=temporal)
        yield board, Dispatch(board), services, temporal
    finally:
        db.close()


def publish(board: AssignmentBoard) -> str:
    aid = board.publish(
        provider_id="p1", kind="execute_job",
        request={"job_id": "j1", "attempt": 1, "outage_grace_s": 60.0},
        task_token=b"T1", workflow_id="job-j1", run_id="r1", activity_id="execute_job:1:4",
        attempt=1, gpus=1, heartbeat_timeout_s=10.0, pickup_timeout_s=30.0)
    (handed,) = board.hand_out("p1")
    # Handed out an hour ago: a swapped result may claim that much GPU time.
    with board.db.transaction() as cur:
        cur.execute("UPDATE assignments SET handed_out_at = ? WHERE assignment_id = ?",
                    (handed.handed_out_at - 3600, aid))
    return aid


def adopt_r2(board: AssignmentBoard) -> Any:
    return board.adopt(
        provider_id="p1", kind="execute_job", job_id="j1", job_attempt=1, task_token=b"T2",
        workflow_id="job-j1", run_id="r2", activity_id="execute_job:1:4", attempt=1,
        heartbeat_timeout_s=10.0, pickup_timeout_s=30.0)


RECORDED = {"exit_code": 3, "timed_out": False, "wall_ms": 1000, "gpu_ms": 1000,
            "log_tail": "what temporal recorded"}
SWAPPED = {"exit_code": 0, "timed_out": False, "wall_ms": 3_500_000, "gpu_ms": 3_500_000,
           "log_tail": "swapped"}


def call(endpoint: Any, dispatch: Dispatch, services: Any, aid: str, body: dict[str, Any]
         ) -> tuple[int, Any]:
    try:
        return 200, asyncio.run(endpoint("p1", aid, Req(body), services, dispatch))
    except HTTPException as err:
        return err.status_code, err.detail


def test_a_report_tried_again_after_a_reset_changes_nothing(world: Any) -> None:
    board, dispatch, services, temporal = world
    aid = publish(board)
    temporal.answer = None  # the honest first report: Temporal takes it
    assert call(api.complete, dispatch, services, aid, {"result": RECORDED})[0] == 200
    # An operator resets the workflow (run r2 now runs); r1's token is NOT_FOUND.
    temporal.answer, temporal.latest_run = RPCStatusCode.NOT_FOUND, "r2"

    again = call(api.complete, dispatch, services, aid, {"result": SWAPPED})
    swap = call(api.complete, dispatch, services, aid, {"result": SWAPPED})

    assert again[0] == 410 and swap[0] == 429, (again, swap)  # the second one: paced
    got = board.get(aid)
    assert got is not None and not got.open and got.outcome == "completed"
    taken = adopt_r2(board)
    assert taken is not None and taken.result == RECORDED


def test_a_report_tried_again_during_a_temporal_blip_keeps_the_delivered_result(
        world: Any) -> None:
    board, dispatch, services, temporal = world
    aid = publish(board)
    temporal.answer = None
    assert call(api.complete, dispatch, services, aid, {"result": RECORDED})[0] == 200
    temporal.answer = RPCStatusCode.UNAVAILABLE  # Temporal's frontend restarts

    again = call(api.complete, dispatch, services, aid, {"result": SWAPPED})
    paced = call(api.complete, dispatch, services, aid, {"result": SWAPPED})

    assert again[0] == 503 and paced[0] == 429  # the agent tries again: 5xx and 429 are
    got = board.get(aid)  # not final (worker_gpu/api_client.py)
    assert got is not None and not got.open and got.outcome == "completed"
    taken = adopt_r2(board)
    assert taken is not None and taken.result == RECORDED


def test_a_failure_tried_again_during_a_blip_stays_a_failure(world: Any) -> None:
    board, dispatch, services, temporal = world
    aid = publish(board)
    temporal.answer = None
    failed = {"message": "oom", "type": "ProviderError"}
    assert call(api.fail, dispatch, services, aid, failed)[0] == 200  # Temporal: failed
    temporal.answer = RPCStatusCode.UNAVAILABLE

    again = call(api.fail, dispatch, services, aid, failed)
    temporal.answer = RPCStatusCode.NOT_FOUND
    done = call(api.complete, dispatch, services, aid, {"result": SWAPPED})

    assert again[0] == 503 and done[0] == 409, (again, done)
    got = board.get(aid)
    assert got is not None and not got.open and got.outcome == "failed"
    assert adopt_r2(board) is None and not board.kept("job-j1", "j1", 1, "execute_job")


def test_a_result_held_for_a_resets_new_run_is_not_the_providers_to_change(
        world: Any) -> None:
    board, dispatch, services, temporal = world
    aid = publish(board)
    # The report comes once the run was reset: held for the new run (api/assignments.py).
    temporal.answer, temporal.latest_run = RPCStatusCode.NOT_FOUND, "r2"
    assert call(api.complete, dispatch, services, aid, {"result": RECORDED})[0] == 200
    got = board.get(aid)
    assert got is not None and got.outcome == "held"

    swap = call(api.complete, dispatch, services, aid, {"result": SWAPPED})
    gone = call(api.fail, dispatch, services, aid, {"message": "x", "type": "ProviderError"})

    assert swap[0] == 409 and gone[0] == 409, (swap, gone)
    taken = adopt_r2(board)
    assert taken is not None and taken.result == RECORDED
