"""JobWorkflow: one client job, durable from admission to reputation.

Deterministic: no I/O, no clocks, no randomness here; everything that touches
the world is an activity. Control activities run on the workflow's own task
queue (`control` unless configured otherwise); stage, execute
and upload run on the allocated provider's own queue. A provider that stops
heartbeating (or never picks its work up) is marked lost and the job goes back
to allocation without it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from workflows import contracts as c

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


class ProviderLostError(Exception):
    pass


def _is_provider_loss(err: ActivityError) -> bool:
    """A timeout of a GPU activity means its provider stopped answering."""
    cause: BaseException | None = err.cause
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__
    return False


@workflow.defn
class JobWorkflow:
    def __init__(self) -> None:
        self._step = "admit"
        self._provider: str | None = None
        self._alloc: c.Allocation | None = None
        self._execution_started: datetime | None = None
        self._executed: c.ExecuteResult | None = None

    @workflow.query
    def progress(self) -> dict[str, Any]:
        return {"step": self._step, "provider_id": self._provider}

    async def _control(self, name: str, arg: Any, result_type: type[T] | None = None) -> T:
        return await workflow.execute_activity(
            name,
            arg,
            task_queue=workflow.info().task_queue,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=CONTROL_RETRY,
            result_type=result_type,
        )

    async def _gpu(
        self,
        inp: c.JobInput,
        provider_id: str,
        name: str,
        arg: Any,
        result_type: type[T],
        run_for_s: float,
        retry: RetryPolicy = GPU_RETRY,
        cancellation: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL,
    ) -> T:
        return await workflow.execute_activity(
            name,
            arg,
            task_queue=c.gpu_task_queue(provider_id),
            schedule_to_start_timeout=timedelta(seconds=inp.gpu_schedule_to_start_timeout_s),
            start_to_close_timeout=timedelta(seconds=run_for_s),
            heartbeat_timeout=timedelta(seconds=inp.gpu_heartbeat_timeout_s),
            retry_policy=retry,
            result_type=result_type,
            cancellation_type=cancellation,
        )

    @workflow.run
    async def run(self, inp: c.JobInput) -> c.JobResult:
        try:
            return await self._run(inp)
        except (asyncio.CancelledError, ActivityError) as err:
            if not is_cancelled_exception(err):
                raise
            return await self._cancelled(inp)

    async def _run(self, inp: c.JobInput) -> c.JobResult:
        admitted = await self._control(c.ADMIT_JOB, inp, c.AdmitResult)
        if not admitted.admitted:
            return c.JobResult(inp.job_id, "REJECTED", admitted.reason)

        excluded: list[str] = []
        for attempt in range(1, inp.max_provider_attempts + 1):
            self._step, self._provider = "allocate", None
            alloc = await workflow.execute_activity(
                c.ALLOCATE_GPUS,
                c.AllocateRequest(inp.job_id, attempt, list(excluded)),
                task_queue=workflow.info().task_queue,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=QUEUE_RETRY,
                result_type=c.Allocation,
                # A cancel must not race an allocation that is being written.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            self._provider, self._alloc = alloc.provider_id, alloc
            try:
                outcome = await self._run_on_provider(inp, alloc)
            except ProviderLostError as lost:
                await self._control(
                    c.MARK_PROVIDER_LOST,
                    c.ProviderLost(inp.job_id, attempt, alloc.provider_id, str(lost)),
                )
                excluded.append(alloc.provider_id)
                continue
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                # The provider answered with a refusal (e.g. inputs changed in storage).
                return await self._close(inp, alloc, None, None, _reason(err))
            return await self._close(inp, alloc, *outcome, "")
        reason = f"lost {len(excluded)} providers in a row: {', '.join(excluded)}"
        refund = c.SettleRequest(inp.job_id, excluded[-1], 0, 0, pay_provider=False)
        await self._control(c.SETTLE_JOB, refund, c.Settlement)
        await self._control(c.FINISH_JOB, c.FinishRequest(inp.job_id, False, reason))
        return c.JobResult(inp.job_id, "FAILED", reason)

    async def _run_on_provider(
        self, inp: c.JobInput, alloc: c.Allocation
    ) -> tuple[c.ExecuteResult, c.UploadResult]:
        pid, attempt = alloc.provider_id, alloc.attempt
        plan = await self._control(
            c.PREPARE_TRANSFERS, c.AllocateRequest(inp.job_id, attempt), c.TransferPlan
        )
        transfer_s = 3600.0
        try:
            self._step = "stage"
            staged = await self._gpu(
                inp, pid, c.STAGE_INPUTS, c.StageRequest(inp.job_id, attempt, plan.inputs),
                c.StageResult, transfer_s,
            )
            await self._step_done(c.JobStep(
                inp.job_id, "inputs_staged", pid, attempt, files=staged.files, bytes=staged.bytes
            ))
            await self._step_done(c.JobStep(inp.job_id, "execution_started", pid, attempt))
            self._step = "execute"
            self._execution_started = workflow.now()
            executed = await self._gpu(
                inp, pid, c.EXECUTE_JOB,
                c.ExecuteRequest(
                    inp.job_id, attempt, plan.command, alloc.gpu_indexes, plan.timeout_s, plan.env,
                    plan.image, plan.network,
                ),
                c.ExecuteResult, plan.timeout_s + 60.0,
                # Never run a job twice on the same provider: a lost run is re-allocated.
                retry=RetryPolicy(maximum_attempts=1),
                # On cancel, settle only once the process has really stopped.
                cancellation=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            self._executed = executed
            await self._step_done(c.JobStep(
                inp.job_id, "execution_finished", pid, attempt, exit_code=executed.exit_code,
                timed_out=executed.timed_out, gpu_ms=executed.gpu_ms, log_tail=executed.log_tail,
            ))
            self._step = "upload"
            uploaded = await self._gpu(
                inp, pid, c.UPLOAD_OUTPUTS, c.UploadRequest(inp.job_id, attempt, plan.outputs),
                c.UploadResult, transfer_s,
            )
            await self._step_done(c.JobStep(
                inp.job_id, "outputs_uploaded", pid, attempt,
                manifest=uploaded.manifest, missing=uploaded.missing,
            ))
        except ActivityError as err:
            if _is_provider_loss(err):
                raise ProviderLostError(f"{pid} stopped answering during {self._step}") from err
            raise
        return executed, uploaded

    async def _step_done(self, step: c.JobStep) -> None:
        await self._control(c.RECORD_JOB_STEP, step)

    async def _close(
        self,
        inp: c.JobInput,
        alloc: c.Allocation,
        executed: c.ExecuteResult | None,
        uploaded: c.UploadResult | None,
        failure: str,
    ) -> c.JobResult:
        """Verify, settle, record reputation, release: the same tail for every ending."""
        pid = alloc.provider_id
        if executed is not None and uploaded is not None:
            self._step = "verify"
            verdict = await self._control(
                c.VERIFY_JOB,
                c.VerifyRequest(
                    inp.job_id, alloc.attempt, pid, executed.exit_code, executed.timed_out,
                    uploaded.manifest, uploaded.missing,
                ),
                c.Verdict,
            )
            gpu_ms = executed.gpu_ms
        else:
            verdict, gpu_ms = c.Verdict(False, False, failure), 0
        self._step = "settle"
        settlement = await self._control(
            c.SETTLE_JOB,
            c.SettleRequest(
                inp.job_id, pid, gpu_ms, alloc.price_per_gpu_hour_micro, verdict.accepted
            ),
            c.Settlement,
        )
        self._step = "reputation"
        if executed is not None:
            outcome = "success" if verdict.accepted else "mismatch"
            await self._control(c.RECORD_REPUTATION, c.ReputationRequest(inp.job_id, pid, outcome))
        await self._control(c.RELEASE_GPUS, c.ReleaseRequest(inp.job_id, pid))
        await self._control(
            c.FINISH_JOB, c.FinishRequest(inp.job_id, verdict.succeeded, verdict.reason)
        )
        self._step = "done"
        state = "SUCCEEDED" if verdict.succeeded else "FAILED"
        return c.JobResult(inp.job_id, state, verdict.reason, pid, settlement.charged_micro)


    async def _cancelled(self, inp: c.JobInput) -> c.JobResult:
        """The client cancelled: pay for the GPU time used, refund the rest, free the GPUs."""
        self._step = "cancel"
        reason = "cancelled by the client"
        alloc, gpu_ms = self._alloc, 0
        if self._executed is not None:
            gpu_ms = self._executed.gpu_ms
        elif alloc is not None and self._execution_started is not None:
            elapsed = workflow.now() - self._execution_started
            gpu_ms = int(elapsed.total_seconds() * 1000) * len(alloc.gpu_indexes)
        # Admission is idempotent: this returns what happened, or admits now so we can refund.
        admitted = await self._control(c.ADMIT_JOB, inp, c.AdmitResult)
        charged = 0
        if admitted.admitted:
            settle = c.SettleRequest(
                inp.job_id,
                alloc.provider_id if alloc else "",
                gpu_ms,
                alloc.price_per_gpu_hour_micro if alloc else 0,
                pay_provider=alloc is not None and gpu_ms > 0,
            )
            charged = (await self._control(c.SETTLE_JOB, settle, c.Settlement)).charged_micro
        if alloc is not None:
            await self._control(c.RELEASE_GPUS, c.ReleaseRequest(inp.job_id, alloc.provider_id))
        await self._control(
            c.FINISH_JOB, c.FinishRequest(inp.job_id, False, reason, cancelled=True)
        )
        self._step = "done"
        provider = alloc.provider_id if alloc else ""
        return c.JobResult(inp.job_id, "CANCELLED", reason, provider, charged)


def _reason(err: ActivityError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type}: {cause.message}"
    return str(cause or err)
