"""How a job's workflows call their steps and read the steps' errors (JobWorkflow, CanaryWorkflow).

Deterministic and free of I/O: imported inside the workflow sandbox (passed through).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType
from temporalio.workflow import ActivityCancellationType

import workflows.contracts as c

T = TypeVar("T")

CONTROL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=20,
)
# A job waits in the queue by retrying allocation until GPUs fit; it never gives up.
QUEUE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=300),
    backoff_coefficient=1.5,
    maximum_interval=timedelta(seconds=3),
    maximum_attempts=0,
)
GPU_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=2,
    non_retryable_error_types=["InputIntegrityError", "PathError"],
)
# Never run a job twice on the same provider: a lost run is re-allocated. The one retry is
# for a try that never reached its provider (the control worker died before it published
# the assignment); activities/assign.py refuses any other, and the API fails a provider's
# own error of this step for good.
EXECUTE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=2,
    non_retryable_error_types=["InputIntegrityError", "PathError"],
)
TRANSFER_S = 3600.0
ALLOCATE_HEARTBEAT_S = 6.0  # the scheduler beats each second; a loaded machine may lag


class StepIds:
    """An activity id of its own for each step a workflow schedules, remote or local:
    `<activity name>:<job attempt>:<n>` (the attempt its request names, 0 where none), n
    counting the run's steps in the order it scheduled them, so the same on replay and
    unique within the run. The codec seals a step's payloads for its id
    (infra/payload_codec.py): one step's result does not open as another's (an earlier
    attempt's result, copied from the history, does not complete a later attempt's step).
    Without an id the SDK gives the codec none (the core numbers a step after the codec ran)
    and the codec seals nothing."""

    def __init__(self) -> None:
        self._scheduled = 0

    def next(self, name: str, arg: Any = None) -> str:
        self._scheduled += 1
        attempt = getattr(arg, "attempt", 0)
        return f"{name}:{attempt if isinstance(attempt, int) else 0}:{self._scheduled}"


class ProviderLostError(Exception):
    pass


class ProviderFailed(Exception):
    """A provider failed its GPU step with an error of its own (not a loss, not a cancel)."""


class AllProvidersLost(Exception):
    pass


class Unplaced(Exception):
    """A bounded run found no GPUs in time (recorded on the job: CheckSkipped, RunUnplaced)."""


# Temporal's timeouts that say the provider is gone: nothing heartbeat the step for longer
# than its heartbeat timeout, or no one started it. A step that ran past its start-to-close
# limit while its provider kept heartbeating is no loss (`overran`).
LOSS_TIMEOUTS = (TimeoutType.HEARTBEAT, TimeoutType.SCHEDULE_TO_START)


def _causes(err: ActivityError) -> list[BaseException]:
    found: list[BaseException] = []
    cause: BaseException | None = err.cause
    while cause is not None and len(found) < 16:
        found.append(cause)
        cause = cause.__cause__
    return found


def is_provider_loss(err: ActivityError) -> bool:
    """A GPU step's provider stopped answering: the control plane found it silent while the
    network could hear it, or it never picked its assignment up; or Temporal found its step
    unheard past the heartbeat timeout (the backstop, past the outage grace) or never
    started. Not a step that ran past its start-to-close limit while heartbeating
    (`overran`): that is the step's length, not the provider's silence."""
    for cause in _causes(err):
        if isinstance(cause, TimeoutError) and cause.type in LOSS_TIMEOUTS:
            return True
        if isinstance(cause, ApplicationError) and cause.type in (c.NOT_PICKED_UP,
                                                                  c.PROVIDER_SILENT):
            return True
    return False


def overran(err: ActivityError) -> bool:
    """A GPU step that its provider kept heartbeating ran past its start-to-close limit:
    not a loss, the provider's own failure (workflows/job.py: blamed once another provider
    got through; the agent bounds what it uploads by the job's disk allowance, so an
    honest upload fits the step's time on any link of a few MB/s)."""
    return not is_provider_loss(err) and any(
        isinstance(cause, TimeoutError) and cause.type == TimeoutType.START_TO_CLOSE
        for cause in _causes(err))


async def gpu_step(
    provider_id: str,
    pickup_timeout_s: float,
    heartbeat_timeout_s: float,
    outage_grace_s: float,
    name: str,
    arg: Any,
    result_type: type[T],
    run_for_s: float,
    activity_id: str,
    retry: RetryPolicy = GPU_RETRY,
    cancellation: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL,
) -> T:
    """One GPU step, as an assignment for `provider_id` (activities/assign.py), under
    `activity_id` (StepIds).

    It runs on the workflow's own (control-plane) task queue: the control worker records
    the assignment and the provider's agent takes it from the API; no provider polls
    Temporal. The assignment must be picked up within `pickup_timeout_s` and heard from
    within `heartbeat_timeout_s` from then on, else its provider is lost.

    Silence is judged by the control worker (activities/assign.py watch_assignments), and
    only while the network can hear: an API restart, a control worker's or Temporal's
    outage loses no run and blames no provider. Temporal's own heartbeat timeout is the
    backstop for when nothing watches: `heartbeat_timeout_s + outage_grace_s`.
    """
    arg = replace(arg, provider_id=provider_id, pickup_timeout_s=pickup_timeout_s,
                  heartbeat_timeout_s=heartbeat_timeout_s, outage_grace_s=outage_grace_s)
    return await workflow.execute_activity(
        name,
        arg,
        task_queue=workflow.info().task_queue,
        # Its pickup may wait out an outage of every API, as long as the grace (it is no
        # provider's fault: activities/assign.py): the run's own time is not cut short.
        start_to_close_timeout=timedelta(seconds=run_for_s + pickup_timeout_s
                                         + outage_grace_s),
        heartbeat_timeout=timedelta(seconds=heartbeat_timeout_s + outage_grace_s),
        retry_policy=retry,
        result_type=result_type,
        cancellation_type=cancellation,
        activity_id=activity_id,
    )


def cancel_requested() -> bool:
    """Whether the workflow has been asked to cancel (its main task was cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def ended(inp: c.JobInput, err: BaseException) -> c.JobResult | None:
    """The job's recorded ending, when a step refused to run again for a job that ended.
    (A local activity's refusal arrives as the ApplicationError itself.)"""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError) and cause.type == c.JOB_ENDED:
        details = cause.details[0] if cause.details else {}
        if isinstance(details, dict):
            try:
                return result_of(inp, c.EndedJob(**details))
            except TypeError:  # not the control plane's record of an ending
                return None
        return c.JobResult(inp.job_id, "FAILED", cause.message)
    return None


def spent(err: BaseException) -> bool:
    """Whether a step refused its attempt as one a reset's new run can neither run again nor
    take over (c.ATTEMPT_SPENT): the workflow leaves it for a fresh attempt."""
    cause = err.cause if isinstance(err, ActivityError) else err
    return isinstance(cause, ApplicationError) and cause.type == c.ATTEMPT_SPENT


def result_of(inp: c.JobInput, ended: c.EndedJob) -> c.JobResult:
    return c.JobResult(inp.job_id, ended.state, ended.reason, ended.provider_id,
                       ended.charged_micro)


def reason(err: ActivityError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type}: {cause.message}"
    return str(cause or err)
