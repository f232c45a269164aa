"""The provider API: a provider's agent takes its assignments and reports on them here.

Plain JSON over HTTPS, each call with `Authorization: Bearer <API key>` of the account
that owns the provider (provider scope):

- `GET  /provider/v1/providers/{pid}/assignments?wait_s=20`: long-poll (at most 25 s)
  for the provider's new assignments, each handed out once;
- `POST .../assignments/{aid}/heartbeat` `{"details": {...}, "log": {"offset", "bytes",
  "text"}}`: alive, with the run's next output (at most MAX_LOG_CHUNK_BYTES, stored for its
  job's live log, api/joblog.py); the answer `{"cancel": true}` says the step was
  cancelled or is gone;
- `POST .../assignments/{aid}/complete` `{"result": {...}}`: the step's result, checked
  strictly against its request;
- `POST .../assignments/{aid}/fail` `{"message", "type", "nonRetryable", "cancelled"}`:
  the step failed, or stopped on a cancel.

401 without a valid key; 403 for a provider that is not the caller's; 404 for an
assignment that is not this provider's (or none); 409 for one already finished (or whose
result is held for a reset's new run), except the same report tried again while its step
may still wait in Temporal: the API that took the first may have died before Temporal did,
so what it kept is delivered again, changing nothing here (410 where the step is no longer
waiting; 429 when one was delivered again within the second). Only then does the API touch
Temporal, with the task token it keeps (activities/assign.py): the provider never sees the
token or any Temporal address.

The control plane measures what it pays for: an execute result's wall and GPU time are
cut to the window the API itself observed (assignment handed out -> result received),
times the GPUs in the request; a provider's own figure can only lower them.

The waiting agents and the per-process pacing of heartbeats are api/dispatch.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import AsyncActivityCancelledError, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api import auth, json_body
from api.dispatch import Dispatch, DispatchDep
from api.services import Services
from infra.assignments import Assignment, AssignmentBoard
from infra.payload_codec import activity_handle
from readmodel.joblog import LogRefused
from workflows import contracts as c

log = logging.getLogger(__name__)
router = APIRouter(prefix="/provider/v1", tags=["provider"])

MAX_WAIT_S = 25.0
MAX_BODY_BYTES = 1 << 20
MAX_DETAILS_BYTES = 16 << 10
MAX_MESSAGE_CHARS = 4096
MAX_LOG_TAIL_CHARS = 16 << 10
MAX_LOG_CHUNK_BYTES = 16 << 10  # one chunk of a run's live log (worker_gpu/joblog.py)
MAX_COUNT = 1 << 53  # bytes, milliseconds: anything an int64 and a float both hold
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def _owner(services: Services, dispatch: Dispatch, request: Request,
                 provider_id: str) -> None:
    """401 without a valid token; 403 unless the caller's account owns the provider. A
    provider let through is heard (api/dispatch.py: the network hears while providers
    reach it)."""
    token = auth.bearer(request.headers.get("authorization"))
    caller = await services.auth.authenticate(token)
    if caller is None:
        raise HTTPException(401, "unauthenticated: send Authorization: Bearer <API key>",
                            headers={"WWW-Authenticate": "Bearer"})
    if not auth.can_manage_provider(caller, provider_id):  # registered a moment ago?
        caller = await services.auth.authenticate(token, fresh=True)
        if not auth.can_manage_provider(caller, provider_id):
            raise HTTPException(403, f"forbidden: provider {provider_id!r} is not one of yours")
    dispatch.heard()


async def _assignment(board: AssignmentBoard, provider_id: str, aid: str) -> Assignment:
    found = await asyncio.to_thread(board.get, aid) if len(aid) <= 64 else None
    if found is None or found.provider_id != provider_id:
        raise HTTPException(404, f"assignmentId: provider {provider_id!r} has no assignment "
                                 f"{aid!r}")
    return found


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json_body.loads(raw) if raw else {}
    except ValueError as err:
        raise HTTPException(400, f"the body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


@router.get("/providers/{provider_id}/assignments")
async def assignments(
    provider_id: str, request: Request, services: ServicesDep, board: DispatchDep,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 20.0,
) -> dict[str, Any]:
    await _owner(services, board, request, provider_id)
    # No Temporal call here: the pickup watch kept the step alive until now, and the
    # agent's first heartbeat goes out as it starts the step.
    got = await board.next(provider_id, wait_s, request.is_disconnected)
    return {"assignments": [a.public() for a in got]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LogChunkIn(_Strict):
    offset: int = Field(ge=0, le=MAX_COUNT)
    bytes: int = Field(ge=0, le=MAX_LOG_CHUNK_BYTES)
    text: str = Field(max_length=MAX_LOG_CHUNK_BYTES)


class HeartbeatBody(_Strict):
    details: dict[str, Any] = Field(default_factory=dict)
    log: LogChunkIn | None = None  # the run's next output (execute_job only)


def _log_chunk(body: dict[str, Any], a: Assignment) -> None:
    """413 for a chunk over the bound, 400 for one no run of this assignment can send."""
    chunk = body.get("log")
    if chunk is None:
        return
    if isinstance(chunk, dict):
        size, text = chunk.get("bytes"), chunk.get("text")
        if (isinstance(size, int) and size > MAX_LOG_CHUNK_BYTES) or (
                isinstance(text, str) and len(text) > MAX_LOG_CHUNK_BYTES):
            raise HTTPException(413, f"log: a chunk carries at most {MAX_LOG_CHUNK_BYTES} "
                                     "bytes of output; send the rest in the next heartbeats")
        if isinstance(size, int) and isinstance(text, str) and len(text) > size:
            raise HTTPException(400, "log.text: longer than the bytes of output it stands for")
    if a.kind != c.EXECUTE_JOB:
        raise HTTPException(400, f"log: only a run has output; this assignment is {a.kind}")


async def _store_log(services: Services, a: Assignment, chunk: LogChunkIn) -> None:
    try:
        await services.live_logs.append(
            str(a.request.get("job_id", "")), int(a.request.get("attempt", 0)),
            a.provider_id, chunk.offset, chunk.bytes, chunk.text)
    except LogRefused as err:
        raise HTTPException(400, str(err)) from None


@router.post("/providers/{provider_id}/assignments/{aid}/heartbeat")
async def heartbeat(
    provider_id: str, aid: str, request: Request, services: ServicesDep, board: DispatchDep,
) -> dict[str, bool]:
    await _owner(services, board, request, provider_id)
    a = await _assignment(board.board, provider_id, aid)
    if not a.open:
        return {"cancel": True}  # a finished run's output is not taken
    # Heard: what the control worker judges silence by (activities/assign.py), written
    # before anything else can refuse the call (an output chunk, Temporal's own outage).
    if board.due_to_record(a):
        await asyncio.to_thread(board.board.seen, aid)
    raw = await _body(request)
    _log_chunk(raw, a)
    body = _parse(HeartbeatBody, raw)
    if len(json.dumps(body.details)) > MAX_DETAILS_BYTES:
        raise HTTPException(413, f"details: larger than {MAX_DETAILS_BYTES} bytes")
    if body.log is not None:
        await _store_log(services, a, body.log)
    if not board.due_to_beat(a):  # output comes often; Temporal hears every few seconds
        return {"cancel": False}
    handle = activity_handle(services.temporal, a.task_token, a.workflow_id, a.activity_id)
    try:
        await handle.heartbeat(body.details)
    except AsyncActivityCancelledError:
        return {"cancel": True}
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            # Temporal is away: the run goes on (its step bears the network's outages for
            # the workflow's grace), and a cancel is heard once Temporal is back.
            log.warning("assignment %s: Temporal did not take the heartbeat: %s", aid,
                        err.message)
            return {"cancel": False}
        now = await asyncio.to_thread(board.board.get, aid)
        if now is not None and now.open and now.task_token != a.task_token:
            return {"cancel": False}  # the reset's new run took it over meanwhile
        if await _reset(services, a) and board.within_grace(aid):
            return {"cancel": False}  # its run was reset: the new run will take it over
        await asyncio.to_thread(board.board.finish, aid, "gone")
        return {"cancel": True}
    return {"cancel": False}


# Results, each checked against what its request asked for.


class StageOut(_Strict):
    files: int = Field(ge=0, le=100_000)
    bytes: int = Field(ge=0, le=MAX_COUNT)


class ExecuteOut(_Strict):
    exit_code: int | None = Field(ge=-(1 << 31), le=(1 << 31) - 1)
    timed_out: bool
    wall_ms: int = Field(ge=0, le=MAX_COUNT)
    gpu_ms: int = Field(ge=0, le=MAX_COUNT)
    log_tail: str = Field(max_length=MAX_LOG_TAIL_CHARS)


class ManifestOut(_Strict):
    path: str = Field(max_length=1024)
    key: str = Field(max_length=2048)
    # What the provider uploaded through its grants, which take BLAKE3 digests only.
    digest: str = Field(pattern=r"^blake3:[0-9a-f]{64}$")
    size: int = Field(ge=0, le=MAX_COUNT)


class UploadOut(_Strict):
    manifest: list[ManifestOut] = Field(max_length=1024)
    missing: list[str] = Field(max_length=1024)
    # Outputs the store refused, with its answer (each also in `missing`).
    refused: dict[str, Annotated[str, Field(max_length=c.MAX_REFUSAL_CHARS)]] = Field(
        default_factory=dict, max_length=1024)


class CompleteBody(_Strict):
    result: dict[str, Any]


class FailBody(_Strict):
    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    type: str = Field(default="ProviderError", pattern=_TYPE.pattern)
    nonRetryable: bool = False
    cancelled: bool = False


def _parse(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise HTTPException(400, f"{where}: {first['msg']}") from None


def _result(a: Assignment, data: dict[str, Any], received_at: float) -> Any:
    """The result as the step's dataclass, or 400 naming the field."""
    if a.kind == c.STAGE_INPUTS:
        stage = _parse(StageOut, data)
        inputs = a.request.get("inputs", [])
        if stage.files > len(inputs) or stage.bytes > sum(int(i["size"]) for i in inputs):
            raise HTTPException(400, "result: more files or bytes than the request staged")
        return c.StageResult(stage.files, stage.bytes)
    if a.kind == c.EXECUTE_JOB:
        run = _parse(ExecuteOut, data)
        # What the control plane saw: handed out -> result received, on every GPU held.
        window_ms = max(0, int((received_at - float(a.handed_out_at or received_at)) * 1000))
        gpus = max(1, a.gpus)
        return c.ExecuteResult(run.exit_code, run.timed_out, min(run.wall_ms, window_ms),
                               min(run.gpu_ms, window_ms * gpus), run.log_tail)
    up = _parse(UploadOut, data)
    asked = {(o["path"], o["key"]) for o in a.request.get("outputs", [])}
    paths = {p for p, _ in asked}
    seen: set[str] = set()
    for m in up.manifest:
        if (m.path, m.key) not in asked or m.path in seen:
            raise HTTPException(400, f"result.manifest: {m.path!r} was not asked for at "
                                     f"{m.key!r} (or is named twice)")
        seen.add(m.path)
    for p in up.missing:
        if p not in paths or p in seen:
            raise HTTPException(400, f"result.missing: {p!r} was not asked for (or is "
                                     "reported twice)")
        seen.add(p)
    for p in up.refused:
        if p not in up.missing:
            raise HTTPException(400, f"result.refused: {p!r} is not reported missing")
    return c.UploadResult(
        [c.ManifestEntry(m.path, m.key, m.digest, m.size) for m in up.manifest],
        list(up.missing), dict(up.refused),
    )


async def _reset(services: Services, a: Assignment) -> bool:
    """Whether the step's workflow run has been reset: its workflow id now runs another
    run (Temporal keeps one open run per id), which schedules the step again."""
    try:
        now = await services.temporal.get_workflow_handle(a.workflow_id).describe()
    except RPCError:
        return False
    return now.run_id != a.run_id and now.status == WorkflowExecutionStatus.RUNNING


async def _finish(board: AssignmentBoard, a: Assignment, outcome: str,
                  result: dict[str, Any] | None = None) -> None:
    """Close the assignment with the provider's report: only while it runs (a result held
    for a reset's new run is not the provider's to change)."""
    if not await asyncio.to_thread(board.finish, a.assignment_id, outcome, result, "running"):
        raise HTTPException(409, f"assignment {a.assignment_id!r} is already finished")


async def _may_wait(board: Dispatch, a: Assignment) -> bool:
    """Whether a finished step may still wait in Temporal for its result, so that its report
    tried again is delivered once more: within its heartbeat timeout and outage grace of
    its finish (past them Temporal has timed it out, and its next try takes the result
    kept: activities/assign.py). 429 when another came within REDELIVER_EVERY_S
    (Dispatch.due_to_redeliver): the agent tries again."""
    now = await asyncio.to_thread(board.board.clock)
    if now - float(a.finished_at or 0.0) > a.heartbeat_timeout_s + a.outage_grace_s:
        return False
    if not board.due_to_redeliver(a.assignment_id):
        raise HTTPException(429, f"assignment {a.assignment_id!r}: its report was delivered "
                                 "again a moment ago", headers={"Retry-After": "1"})
    return True


async def _deliver(board: AssignmentBoard, a: Assignment, call: Any,
                   finished_as: str = "") -> dict[str, bool]:
    """Hand the outcome to Temporal; the assignment stays finished unless the RPC failed
    in a way worth trying again and this request finished it (`finished_as`, the outcome
    it wrote): only that finish is undone, never a report's delivered earlier."""
    try:
        await call
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(410, f"assignment {a.assignment_id!r}: the step is no longer "
                                     "waiting (timed out or cancelled)") from None
        if finished_as:
            await asyncio.to_thread(board.reopen, a.assignment_id, finished_as)
        raise HTTPException(503, f"the control plane did not take it: {err.message}") from None
    return {"ok": True}


@router.post("/providers/{provider_id}/assignments/{aid}/complete")
async def complete(
    provider_id: str, aid: str, request: Request, services: ServicesDep, board: DispatchDep,
) -> dict[str, bool]:
    await _owner(services, board, request, provider_id)
    received_at = time.time()
    a = await _assignment(board.board, provider_id, aid)
    if not a.open:
        # A report tried again: the API that kept the first may have died before Temporal
        # took it. The result kept goes once more, and nothing else: the row is not this
        # request's to reopen or hold.
        kept = (await asyncio.to_thread(board.board.reported, aid)
                if a.outcome == "completed" and await _may_wait(board, a) else None)
        if kept is None:
            raise HTTPException(409, f"assignment {aid!r} is already finished")
        handle = activity_handle(services.temporal, a.task_token, a.workflow_id, a.activity_id)
        return await _deliver(board.board, a, handle.complete(c.step_result(a.kind, kept)))
    result = _result(a, _parse(CompleteBody, await _body(request)).result, received_at)
    await _finish(board.board, a, "completed", dataclasses.asdict(result))
    handle = activity_handle(services.temporal, a.task_token, a.workflow_id, a.activity_id)
    try:
        return await _deliver(board.board, a, handle.complete(result), "completed")
    except HTTPException as err:
        now = await asyncio.to_thread(board.board.get, aid) if err.status_code == 410 else None
        if now is not None and now.task_token != a.task_token:  # taken over meanwhile
            handle = activity_handle(services.temporal, now.task_token, now.workflow_id,
                                     now.activity_id)
            return await _deliver(board.board, now, handle.complete(result), "completed")
        if now is None or not await _reset(services, a):
            raise
    # Its run was reset before the result came: kept for the new run (it takes it over).
    await asyncio.to_thread(board.board.hold, aid)
    return {"ok": True}


@router.post("/providers/{provider_id}/assignments/{aid}/fail")
async def fail(
    provider_id: str, aid: str, request: Request, services: ServicesDep, board: DispatchDep,
) -> dict[str, bool]:
    await _owner(services, board, request, provider_id)
    a = await _assignment(board.board, provider_id, aid)
    body = _parse(FailBody, await _body(request))
    if body.type in c.CONTROL_PLANE_ERRORS:
        raise HTTPException(400, f"type: {body.type!r} is the control plane's own")
    outcome = "cancelled" if body.cancelled else "failed"
    # The same report tried again is delivered again (the API that took the first may have
    # died before Temporal did), changing nothing here.
    again = not a.open
    if a.open:
        await _finish(board.board, a, outcome)
    elif a.outcome != outcome or not await _may_wait(board, a):
        raise HTTPException(409, f"assignment {aid!r} is already finished")
    handle = activity_handle(services.temporal, a.task_token, a.workflow_id, a.activity_id)
    if body.cancelled:
        try:
            await handle.report_cancellation(body.message)
            return {"ok": True}
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise HTTPException(410, f"assignment {aid!r}: the step is no longer "
                                         "waiting") from None
            if again:
                raise HTTPException(503, f"the control plane did not take it: {err.message}"
                                    ) from None
            # No cancel was asked for: a step the provider stopped on its own failed.
    # A run is never tried twice on one provider (workflows/steps.py EXECUTE_RETRY).
    error = ApplicationError(f"provider {provider_id}: {body.message}", type=body.type,
                             non_retryable=body.nonRetryable or a.kind == c.EXECUTE_JOB)
    return await _deliver(board.board, a, handle.fail(error), "" if again else outcome)
