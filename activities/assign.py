"""The GPU steps as assignments: the control worker's side of stage, execute and upload.

A workflow schedules a GPU step on its own (control-plane) task queue with the chosen
provider's id in the request. This activity records an *assignment* for that provider,
with the activity's task token, in the control plane's database, and returns without a
result (`activity.raise_complete_async()`): the API completes the activity when the
provider's agent reports (api/assignments.py). No provider ever reaches Temporal.

The assignment watch keeps an assignment alive while it waits for its provider's agent (it
heartbeats the activity for it) and, past the pickup bound, fails it as not picked up; and
it fails a handed-out assignment whose provider has not been heard for its heartbeat
timeout as silent. Both the workflow treats as a lost provider. Silence counts only while
the network can hear (an API is up and providers reach it: infra/listeners.py,
api/dispatch.py), and from the moment it could hear again: an API restart, an outage in
front of the APIs, or the control worker's or Temporal's outage, loses no
run and blames no provider (Temporal's own heartbeat timeout, past the workflow's outage
grace, is the backstop for when no watch runs).

A Temporal reset ends the workflow's run while its step may be on the provider; the new run
schedules the step again and takes the earlier run's over (AssignmentBoard.adopt): the
agent goes on and reports to the new run, or the result it reported is the new run's, so
an attempt's command runs once and its outputs are uploaded once. A new run does not stage
again into an attempt whose command an earlier run handed out.

A step the new run cannot take over is not run again in the same attempt (its work
directory, its output keys): one an earlier run handed out that closed with no result to
take (the new run came after the API's grace, api/dispatch.py, and its agent was told to
stop), or one of an attempt that ran whose results are no longer kept (a day,
infra/assignments.py KEEP_FINISHED_S). It is refused as `AttemptSpent`, and the workflow
leaves the attempt for a fresh one (workflows/job.py): no one blamed, no one paid for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import AsyncActivityCancelledError, Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.guard import Callers, ours
from activities.refusals import RECORDED
from infra import tracing
from infra.assignments import Assignment, AssignmentBoard
from infra.payload_codec import activity_handle
from workflows import contracts as c

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0


class AssignActivities:
    def __init__(self, board: AssignmentBoard, callers: Callers):
        self.board, self.callers = board, callers

    def _assign(self, kind: str, request: Any, gpus: int) -> Any:
        """Publish the step for its provider and complete asynchronously; or the result an
        earlier run of this workflow left (adopt)."""
        info = activity.info()
        if not request.provider_id:
            raise ApplicationError(f"{kind}: the request names no provider", non_retryable=True)
        heartbeat_s = min(600.0, max(0.5, float(request.heartbeat_timeout_s)))
        ids: dict[str, Any] = {"task_token": info.task_token, "workflow_id": info.workflow_id or "",
               "run_id": info.workflow_run_id or "", "activity_id": info.activity_id,
               "attempt": info.attempt}
        pickup_s = max(1.0, float(request.pickup_timeout_s))
        adopted = self.board.adopt(
            provider_id=request.provider_id, kind=kind, job_id=request.job_id,
            job_attempt=request.attempt, heartbeat_timeout_s=heartbeat_s,
            pickup_timeout_s=pickup_s, **ids,
        )
        if adopted is not None:
            log.info("%s of %s#%s: took over assignment %s from an earlier run", kind,
                     request.job_id, request.attempt, adopted.assignment_id)
            if adopted.result is not None:
                return c.step_result(kind, adopted.result)
            activity.raise_complete_async()
        earlier = (self.board.tried(ids["workflow_id"], ids["run_id"], info.activity_id)
                   if info.attempt > 1 else [])
        for aid in earlier:
            # Its provider reported it, and the API that kept the result died before
            # Temporal took it (nor did the agent's report tried again reach one): taken.
            if (kept := self.board.reported(aid)) is not None:
                log.info("%s of %s#%s: took the result reported to assignment %s", kind,
                         request.job_id, request.attempt, aid)
                return c.step_result(kind, kept)
        if kind == c.EXECUTE_JOB and earlier:
            # An earlier try reached its provider, and nothing heard it past the outage
            # grace (Temporal timed it out): the run is lost, never run again on it.
            raise ApplicationError(
                f"provider {request.provider_id} was not heard past the outage grace during "
                f"its {kind} assignment", type=c.PROVIDER_SILENT, non_retryable=True)
        self._not_again(kind, request)
        if self.board.abandoned(ids["workflow_id"], ids["run_id"], kind, request.job_id,
                                request.attempt):
            raise ApplicationError(
                f"job {request.job_id} attempt {request.attempt}: an earlier run of its "
                f"workflow handed its {kind} out, closed with no result to take over; a fresh "
                "attempt runs", type=c.ATTEMPT_SPENT, non_retryable=True)
        if kind == c.STAGE_INPUTS and self.board.begun(
                ids["workflow_id"], ids["run_id"], request.job_id, request.attempt):
            # Its command was handed out by the run a reset ended (it runs, or ran, in the
            # work directory): nothing is fetched under it; the staging was recorded once.
            return c.StageResult(0, 0)
        self.board.publish(
            provider_id=request.provider_id, kind=kind, request=dataclasses.asdict(request),
            **ids,
            gpus=gpus, heartbeat_timeout_s=heartbeat_s, pickup_timeout_s=pickup_s,
            trace=tracing.headers(),  # the agent's span of the step joins the job's trace
        )
        activity.raise_complete_async()

    def _not_again(self, kind: str, request: Any) -> None:
        """Refuse to run an attempt's command or upload a second time: one an earlier run
        recorded but whose result the board no longer holds (kept KEEP_FINISHED_S); the
        workflow runs a fresh attempt."""
        network = self.callers.network
        job = network.find_job(request.job_id) if network is not None else None
        if (kind in RECORDED and job is not None
                and f"{RECORDED[kind]}:{request.attempt}" in job.recorded):
            raise ApplicationError(
                f"job {request.job_id} attempt {request.attempt} has already run; {kind} is "
                "not run again; a fresh attempt runs", type=c.ATTEMPT_SPENT, non_retryable=True,
            )

    @activity.defn(name=c.STAGE_INPUTS, no_thread_cancel_exception=True)
    @ours
    def stage_inputs(self, request: c.StageRequest) -> c.StageResult:
        result: c.StageResult = self._assign(c.STAGE_INPUTS, request, 0)
        return result

    @activity.defn(name=c.EXECUTE_JOB, no_thread_cancel_exception=True)
    @ours
    def execute_job(self, request: c.ExecuteRequest) -> c.ExecuteResult:
        result: c.ExecuteResult = self._assign(c.EXECUTE_JOB, request, len(request.gpu_indexes))
        return result

    @activity.defn(name=c.UPLOAD_OUTPUTS, no_thread_cancel_exception=True)
    @ours
    def upload_outputs(self, request: c.UploadRequest) -> c.UploadResult:
        result: c.UploadResult = self._assign(c.UPLOAD_OUTPUTS, request, 0)
        return result

    def all(self) -> list[Callable[..., Any]]:
        return [self.stage_inputs, self.execute_job, self.upload_outputs]


async def watch_assignments(client: Client, board: AssignmentBoard, stop: asyncio.Event) -> None:
    """Heartbeat assignments still waiting for their provider; fail those past their pickup
    bound, and those handed out whose provider fell silent."""
    while not stop.is_set():
        try:
            await _watch_once(client, board)
        except Exception as err:  # the database or Temporal blinked: next round
            log.warning("assignment watch: %s", err)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)


async def _watch_once(client: Client, board: AssignmentBoard) -> None:
    waiting = await asyncio.to_thread(board.waiting)
    # An API's outage is no provider's fault: nobody could pick anything up meanwhile.
    hearing = await asyncio.to_thread(board.listeners.rows) if waiting else []
    now = board.clock()
    for a in waiting:
        if not a.pickup_overdue(now, hearing):
            await _fail_or_beat(client, board, a, None)
        else:
            await _fail_or_beat(client, board, a, ApplicationError(
                f"provider {a.provider_id} did not pick up its {a.kind} assignment within "
                f"{a.pickup_by - a.created_at:g}s", type=c.NOT_PICKED_UP, non_retryable=True),
                "not picked up")
    for a in await asyncio.to_thread(board.silent):
        await _fail_or_beat(client, board, a, ApplicationError(
            f"provider {a.provider_id} was not heard for {a.heartbeat_timeout_s:g}s during "
            f"its {a.kind} assignment", type=c.PROVIDER_SILENT,
            # A run is never run twice on one provider; staging and upload are tried again.
            non_retryable=a.kind == c.EXECUTE_JOB), "silent")
    await asyncio.to_thread(board.forget_finished)


async def _fail_or_beat(client: Client, board: AssignmentBoard, a: Assignment,
                        failure: ApplicationError | None, outcome: str = "") -> None:
    """Fail the assignment's step with `failure` (closing it first: an agent's report that
    comes meanwhile is refused), or heartbeat it while it waits."""
    handle = activity_handle(client, a.task_token, a.workflow_id, a.activity_id)
    try:
        if failure is None:
            await handle.heartbeat()
            return
        # Only in the state it was judged in: a step handed out meanwhile is not "not picked
        # up", and a result that came meanwhile (held for a reset's new run) is kept.
        state = "running" if a.handed_out_at is not None else "waiting"
        if not await asyncio.to_thread(board.finish, a.assignment_id, outcome, None, state):
            return  # handed out, reported or closed meanwhile
        log.info("assignment %s: %s", a.assignment_id, failure.message)
        await handle.fail(failure)
    except AsyncActivityCancelledError:
        if await asyncio.to_thread(board.finish, a.assignment_id, "cancelled"):
            await handle.report_cancellation()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:  # Temporal is away, or this row's RPC
            if failure is not None:  # failed: open again, failed at the next round (the
                await asyncio.to_thread(board.reopen, a.assignment_id, outcome)  # rest go on)
            log.warning("assignment %s: Temporal did not take it: %s", a.assignment_id,
                        err.message)
            return
        log.info("assignment %s: %s", a.assignment_id, err.message)  # the step is gone
        await asyncio.to_thread(board.finish, a.assignment_id, "gone")
