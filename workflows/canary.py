"""CanaryWorkflow: a known-answer job on exactly one provider, judged, paid, recorded.

Started by JobWorkflow after a provider's run was accepted, at that provider's
canary rate (domain/verification.py), as an abandoned child with workflow id
`canary-<job_id>-<provider_id>`. It waits a random delay, reserves free GPUs on
that provider only (skipping quietly when it is offline or busy), then runs the
canary like any job: the same transfer plan and the same stage, execute and
upload steps, as assignments for that provider (activities/assign.py), with the outputs going to
the canary client's storage through presigned URLs. The control plane then
compares the uploaded manifest with storage and with the answer it computed
itself: an honest provider is paid for its GPU time from protocol:verification
and gets a "success"; a wrong answer is a "mismatch" and is not paid; a lost
provider is "lost", a timeout "timeout". The GPUs are released at the end
whatever happened. Deterministic, as every workflow: the seed and the delay come
from the plan activity, recorded in the parent's history.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.contracts as c
    from workflows.steps import (
        CONTROL_RETRY,
        EXECUTE_RETRY,
        GPU_RETRY,
        TRANSFER_S,
        StepIds,
        gpu_step,
        is_provider_loss,
        overran,
    )
    from workflows.steps import reason as error_reason

T = TypeVar("T")

# A canary is one run: attempt 1 of its job.
ATTEMPT = 1


@workflow.defn(name=c.CANARY_WORKFLOW)
class CanaryWorkflow:
    def __init__(self) -> None:
        self._step = "wait"
        self._ids = StepIds()  # each step's activity id (the codec seals for it)

    @workflow.query
    def progress(self) -> dict[str, Any]:
        return {"step": self._step}

    async def _control(self, name: str, arg: Any, result_type: type[T] | None = None) -> T:
        return await workflow.execute_activity(
            name,
            arg,
            task_queue=workflow.info().task_queue,
            start_to_close_timeout=timedelta(seconds=c.CONTROL_STEP_S),
            retry_policy=CONTROL_RETRY,
            result_type=result_type,
            activity_id=self._ids.next(name, arg),
        )

    async def _gpu(
        self, inp: c.CanaryInput, name: str, arg: Any, result_type: type[T], run_for_s: float,
        retry: RetryPolicy = GPU_RETRY,
    ) -> T:
        return await gpu_step(
            inp.provider_id, inp.gpu_schedule_to_start_timeout_s, inp.gpu_heartbeat_timeout_s,
            inp.gpu_outage_grace_s, name, arg, result_type, run_for_s,
            self._ids.next(name, arg), retry,
        )

    @workflow.run
    async def run(self, inp: c.CanaryInput) -> c.CanaryResult:
        if inp.delay_s > 0:
            await workflow.sleep(inp.delay_s)
        self._step = "reserve"
        start = await self._control(
            c.START_CANARY,
            c.CanaryStartRequest(inp.origin_job_id, inp.provider_id, inp.seed),
            c.CanaryStart,
        )
        if not start.started:
            self._step = "done"
            return c.CanaryResult(inp.origin_job_id, inp.provider_id, "", "skipped", start.reason)
        try:
            report = await self._run(inp, start)
            self._step = "judge"
            return await self._control(c.CLOSE_CANARY, report, c.CanaryResult)
        finally:
            await self._control(c.RELEASE_GPUS, c.ReleaseRequest(start.job_id, inp.provider_id))
            self._step = "done"

    async def _run(self, inp: c.CanaryInput, start: c.CanaryStart) -> c.CanaryReport:
        """Stage, execute, upload on the provider, recording each step on the canary's job."""
        job_id, pid = start.job_id, inp.provider_id
        report = c.CanaryReport(inp.origin_job_id, pid, ATTEMPT)
        try:
            plan = await self._control(
                c.PREPARE_TRANSFERS, c.AllocateRequest(job_id, ATTEMPT), c.TransferPlan
            )
            self._step = "stage"
            staged = await self._gpu(
                inp, c.STAGE_INPUTS, c.StageRequest(job_id, ATTEMPT, plan.inputs),
                c.StageResult, TRANSFER_S,
            )
            await self._record(c.JobStep(
                job_id, "inputs_staged", pid, ATTEMPT, files=staged.files, bytes=staged.bytes
            ))
            await self._record(c.JobStep(job_id, "execution_started", pid, ATTEMPT))
            self._step = "execute"
            executed = await self._gpu(
                inp, c.EXECUTE_JOB,
                c.ExecuteRequest(
                    job_id, ATTEMPT, plan.command, start.gpu_indexes, plan.timeout_s, plan.env,
                    plan.image, plan.network,
                ),
                c.ExecuteResult, plan.timeout_s + 60.0,
                retry=EXECUTE_RETRY,
            )
            await self._record(c.JobStep(
                job_id, "execution_finished", pid, ATTEMPT, exit_code=executed.exit_code,
                timed_out=executed.timed_out, gpu_ms=executed.gpu_ms, log_tail=executed.log_tail,
            ))
            report.exit_code, report.timed_out = executed.exit_code, executed.timed_out
            report.gpu_ms = executed.gpu_ms
            self._step = "upload"
            uploaded = await self._gpu(
                inp, c.UPLOAD_OUTPUTS, c.UploadRequest(job_id, ATTEMPT, plan.outputs),
                c.UploadResult, TRANSFER_S,
            )
            await self._record(c.JobStep(
                job_id, "outputs_uploaded", pid, ATTEMPT,
                manifest=uploaded.manifest, missing=uploaded.missing,
            ))
            report.manifest, report.missing = uploaded.manifest, uploaded.missing
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            # A canary is small and the network's own: a step past its time limit while
            # heartbeating is the provider stalling it (no job of a client's to blame).
            if is_provider_loss(err) or overran(err):
                reason = f"{pid} stopped answering during {self._step}"
                await self._control(
                    c.MARK_PROVIDER_LOST, c.ProviderLost(job_id, ATTEMPT, pid, reason)
                )
                report.lost = True
            else:  # e.g. a transfer refused: not necessarily the provider's doing
                report.void = f"{self._step} failed: {error_reason(err)}"
        return report

    async def _record(self, step: c.JobStep) -> None:
        await self._control(c.RECORD_JOB_STEP, step)
