"""Running one assignment: the step in a thread, its heartbeats and its report, over the API.

`run_assignment` turns the assignment's request into the step's dataclass, runs the step
(stage, execute or upload of GpuActivities) inside an `ApiStepContext`, and reports the
result or the failure. The context sends the step's latest heartbeat details to the API
every interval; the API's answer is how a cancel arrives. A step whose heartbeats the API
refuses for longer than its heartbeat timeout, or cannot be reached for longer than its
give-up bound (the heartbeat timeout plus the network's outage grace: an API restart is
borne), has been given up by the network (it was re-allocated), so the context cancels it
here too.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import types
import typing
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from infra import tracing
from worker_gpu.activities import GpuActivities
from worker_gpu.api_client import UNREACHABLE_BACKOFF_S, ApiRejected, ApiUnreachable, ProviderApi
from worker_gpu.context import StepCancelled, StepContext, StepFailed, running
from worker_gpu.joblog import LogChunk
from workflows import contracts as c

log = logging.getLogger(__name__)

REQUESTS: dict[str, type[Any]] = {
    c.STAGE_INPUTS: c.StageRequest,
    c.EXECUTE_JOB: c.ExecuteRequest,
    c.UPLOAD_OUTPUTS: c.UploadRequest,
}
# How long a finished step keeps trying to deliver its report to an API that is down.
REPORT_FOR_S = 120.0
# A job's new output goes with an early heartbeat at most this often (more often while
# several chunks wait); at most this much waits for the API (the oldest goes first).
LOG_EVERY_S = 1.0
LOG_CATCH_UP_S = 0.2
MAX_PENDING_LOG_BYTES = 256 << 10
# How long a finished step waits for its last output to reach the API before its result.
DRAIN_LOG_S = 10.0


def from_dict(cls: Any, data: Any) -> Any:
    """A contracts dataclass (nested ones, lists, optionals) from its JSON form; unknown
    fields are left out, so a newer control plane may add some."""
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected an object")
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: from_dict(hints[f.name], data[f.name])
                      for f in dataclasses.fields(cls) if f.name in data})
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [a for a in typing.get_args(cls) if a is not type(None)]
        return from_dict(inner, data)
    if origin is list:
        (inner,) = typing.get_args(cls)
        return [from_dict(inner, x) for x in data]
    if origin is dict:
        return dict(data)
    return data


class ApiStepContext(StepContext):
    """Sends the step's latest heartbeat to the API every `interval_s` until stopped, and
    the job's new output (joblog.LogChunk) in bounded chunks, one with each heartbeat: a
    heartbeat goes out early (at most every LOG_EVERY_S) when output waits.

    `api` is shared by every step of the agent (an httpx client is safe to share between
    threads, and making one per step cost tens of CPU-ms each)."""

    def __init__(self, api: ProviderApi, provider_id: str, assignment_id: str,
                 heartbeat_timeout_s: float, give_up_after_s: float | None = None) -> None:
        super().__init__()
        self.api, self.provider_id, self.assignment_id = api, provider_id, assignment_id
        self.timeout_s = max(0.5, heartbeat_timeout_s)
        self.give_up_s = max(self.timeout_s, give_up_after_s or 0.0)
        self.interval_s = min(10.0, max(0.2, self.timeout_s / 3))
        self.told_to_cancel = False  # by the API (else: stopped here, e.g. the agent stops)
        self._latest: Any = {}
        self._pending: deque[LogChunk] = deque()  # output not yet taken by the API
        self._pending_bytes = 0
        self._draining = False
        self._failing = False  # the last heartbeat was not delivered
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"heartbeat-{assignment_id[:8]}")

    def heartbeat(self, details: Any = None) -> None:
        super().heartbeat(details)
        self._latest = details if isinstance(details, dict) else {}

    def log(self, chunks: list[Any]) -> None:
        with self._lock:
            for chunk in chunks:
                self._pending.append(chunk)
                self._pending_bytes += chunk.size
            while self._pending_bytes > MAX_PENDING_LOG_BYTES:  # the API shows the gap
                self._pending_bytes -= self._pending.popleft().size
        self._wake.set()

    def drain_log(self, timeout_s: float = DRAIN_LOG_S) -> None:
        """Send the output still waiting (before the step's result ends the assignment)."""
        self._draining = True
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while self._pending and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self) -> ApiStepContext:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)

    def _due(self, last: float) -> float:
        """When the next heartbeat goes: output waiting brings it forward."""
        if not self._pending:
            return last + self.interval_s
        if self._failing:  # the API is away: the usual pace (draining: LOG_CATCH_UP_S)
            return last + (self.interval_s if not self._draining else LOG_CATCH_UP_S)
        if self._draining:
            return last
        return last + (LOG_EVERY_S if len(self._pending) == 1 else LOG_CATCH_UP_S)

    def _loop(self) -> None:
        delivered = last = time.monotonic()
        first = True
        while not self._stop.is_set():
            wait = self._due(last) - time.monotonic()
            if not first and wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            first, last = False, time.monotonic()
            chunk = self._pending[0] if self._pending else None
            try:
                if self.api.assignment_heartbeat(
                        self.provider_id, self.assignment_id, self._latest,
                        timeout_s=max(2.0, self.timeout_s),
                        log=None if chunk is None else chunk.as_json()):
                    self.told_to_cancel = True
                    self.cancel()
                delivered, self._failing = time.monotonic(), False
                self._taken(chunk)
            except ApiRejected as err:
                self._failing = True
                self._taken(chunk)  # a chunk the API refuses is not sent again
                if chunk is not None:
                    log.warning("assignment %s: the API refused output at %d: %s",
                                self.assignment_id, chunk.offset, err)
                self._gave_up(delivered, err, self.timeout_s)
            except ApiUnreachable as err:
                self._failing = True
                self._gave_up(delivered, err, self.give_up_s)

    def _taken(self, chunk: LogChunk | None) -> None:
        with self._lock:
            if chunk is not None and self._pending and self._pending[0] is chunk:
                self._pending.popleft()
                self._pending_bytes -= chunk.size

    def _gave_up(self, delivered: float, err: Exception, bound_s: float) -> None:
        if time.monotonic() - delivered > bound_s:
            log.warning("assignment %s: no heartbeat delivered for %.0fs (%s); "
                        "stopping it", self.assignment_id, bound_s, err)
            self.cancel()


def reported(result: Any) -> dict[str, Any]:
    """A step's result as the API takes it: each manifest entry as events record it, without
    the field the contract keeps for histories from before BLAKE3."""
    data = dataclasses.asdict(result)
    if isinstance(result, c.UploadResult):
        data["manifest"] = [m.record() for m in result.manifest]
    return data


def _seconds(assignment: dict[str, Any], key: str, default: float) -> float:
    """A bound the API gave, in seconds (at most an hour); `default` where it gave none."""
    try:
        return min(3600.0, max(0.0, float(assignment.get(key, default))))
    except (TypeError, ValueError):
        return default


def run_assignment(api: ProviderApi, activities: GpuActivities, assignment: dict[str, Any],
                   contexts: dict[str, ApiStepContext]) -> None:
    """Run one assignment to its end and report it; never raises."""
    aid = str(assignment.get("assignmentId", ""))
    provider_id = str(assignment.get("providerId", activities.provider_id))
    kind = str(assignment.get("kind", ""))
    ctx = ApiStepContext(api, provider_id, aid, _seconds(assignment, "heartbeatTimeoutS", 10.0),
                         _seconds(assignment, "giveUpAfterS", 0.0))
    contexts[aid] = ctx
    ctx.start()
    report: tuple[str, Any]
    request_data = assignment.get("request")
    job_id = str(request_data.get("job_id", "")) if isinstance(request_data, dict) else ""
    try:
        with running(ctx), _span(assignment.get("trace"), kind, job_id):
            try:
                request = from_dict(REQUESTS[kind], assignment.get("request"))
                result = getattr(activities, kind)(request)
                report = ("complete", reported(result))
            except StepCancelled as err:
                report = ("cancelled", str(err))
            except StepFailed as err:
                report = ("fail", err)
            except (KeyError, ValueError, TypeError) as err:
                report = ("fail", StepFailed(f"{kind}: the assignment cannot be read: {err}",
                                             "BadAssignment", non_retryable=True))
            except Exception as err:  # a bug here: the step fails, the agent goes on
                log.exception("assignment %s (%s) failed", aid, kind)
                report = ("fail", StepFailed(f"{type(err).__name__}: {err}",
                                             type(err).__name__))
        ctx.drain_log()  # the run's last output reaches the API before its result
        _deliver(api, ctx, kind, report)
    finally:
        ctx.stop()
        contexts.pop(aid, None)


@contextmanager
def _span(trace: Any, kind: str, job_id: str) -> Iterator[None]:
    """The step's span, a child of the control plane's (the assignment carries its W3C
    trace headers), so that the provider's work and transfers hang in the job's trace."""
    if not tracing.enabled():
        yield
        return
    from opentelemetry import propagate
    from opentelemetry import trace as otel

    carrier = {k: v for k, v in trace.items() if isinstance(k, str) and isinstance(v, str)
               } if isinstance(trace, dict) else {}
    tracer = otel.get_tracer("gpgpu.worker_gpu")
    with tracer.start_as_current_span(f"RunAssignment:{kind}",
                                      context=propagate.extract(carrier),
                                      attributes={"gpgpu.job_id": job_id}):
        yield


def _deliver(api: ProviderApi, ctx: ApiStepContext, kind: str, report: tuple[str, Any]) -> None:
    """Report the step's end; the heartbeat goes on meanwhile, so a short API outage costs
    nothing."""
    what, value = report
    deadline = time.monotonic() + max(REPORT_FOR_S, ctx.give_up_s)
    delay = 0.5
    while True:
        try:
            if what == "complete":
                api.complete(ctx.provider_id, ctx.assignment_id, value)
            elif what == "cancelled":
                api.fail(ctx.provider_id, ctx.assignment_id, value or "cancelled",
                         "Cancelled" if ctx.told_to_cancel else "AgentStopped",
                         cancelled=ctx.told_to_cancel)
            else:
                api.fail(ctx.provider_id, ctx.assignment_id, value.message, value.type,
                         value.non_retryable)
            log.info("assignment %s (%s): %s reported", ctx.assignment_id, kind, what)
            return
        except ApiRejected as err:  # finished already, gone, or refused: nothing to do
            log.warning("assignment %s (%s): the API refused the report: %s",
                        ctx.assignment_id, kind, err)
            return
        except ApiUnreachable as err:
            if time.monotonic() > deadline:
                log.warning("assignment %s (%s): report not delivered: %s",
                            ctx.assignment_id, kind, err)
                return
            time.sleep(delay)
            # Within a second of the API's return (as the poll, worker_gpu/agent.py): a step
            # whose result waits here is judged silent a heartbeat timeout after the network
            # hears again (a report 8 s out lost a finished run in test_kill_restart).
            delay = min(delay * 2, UNREACHABLE_BACKOFF_S)
