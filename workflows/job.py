"""JobWorkflow: one client job, durable from admission to reputation.

Deterministic: no I/O, no clocks, no randomness here; everything that touches
the world is an activity. Control activities run on the workflow's own task
queue (`control` unless configured otherwise); stage, execute and upload run
there too, as assignments the allocated provider takes from the API. A provider
that stops heartbeating (or never picks its work up) is marked lost and that run
goes back to allocation without it; the next attempt starts from the checkpoint
the job last wrote on a provider of the same owner, if any (worker_gpu/checkpoint.py).
A provider that fails its step with an error of its own is treated alike (RunFailed),
and blamed (`failure`) once another provider got through. A run that timed out with
no output, unchecked, is charged but not paid to its provider (`timeout`).

Verification: every run's manifest is checked against storage. A client may ask
for k replicas on distinct providers (a majority of matching outputs decides;
with two that disagree a third breaks the tie) and for a verifier command run
on yet another provider; the network adds its own replicated check to a
provider's work at a rate that falls as the provider earns trust.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    import workflows.contracts as c
    import workflows.search_attributes as sa

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
TRANSFER_S = 3600.0
ALLOCATE_HEARTBEAT_S = 6.0  # the scheduler beats each second; a loaded machine may lag
# JobWorkflow has no `workflow.patched` branches: the versions written while the network was
# developed were folded into this one before any history was kept (tests/replay/ holds
# histories of this version). The next change of its logic goes behind a patch.


class ProviderLostError(Exception):
    pass


class ProviderFailed(Exception):
    """A provider failed its GPU step with an error of its own (not a loss, not a cancel)."""


class AllProvidersLost(Exception):
    pass


class Unplaced(Exception):
    """A bounded run found no GPUs in time (recorded on the job: CheckSkipped, RunUnplaced)."""


def _is_provider_loss(err: ActivityError) -> bool:
    """A timeout of a GPU step means its provider stopped answering; an assignment it did
    not pick up in time, that it never answered at all."""
    cause: BaseException | None = err.cause
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return True
        if isinstance(cause, ApplicationError) and cause.type == c.NOT_PICKED_UP:
            return True
        cause = cause.__cause__
    return False


async def gpu_step(
    provider_id: str,
    pickup_timeout_s: float,
    heartbeat_timeout_s: float,
    name: str,
    arg: Any,
    result_type: type[T],
    run_for_s: float,
    retry: RetryPolicy = GPU_RETRY,
    cancellation: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL,
) -> T:
    """One GPU step, as an assignment for `provider_id` (activities/assign.py).

    It runs on the workflow's own (control-plane) task queue: the control worker records
    the assignment and the provider's agent takes it from the API; no provider polls
    Temporal. The assignment must be picked up within `pickup_timeout_s` and heartbeated
    within `heartbeat_timeout_s` from then on, else its provider is lost.
    """
    arg = replace(arg, provider_id=provider_id, pickup_timeout_s=pickup_timeout_s)
    return await workflow.execute_activity(
        name,
        arg,
        task_queue=workflow.info().task_queue,
        start_to_close_timeout=timedelta(seconds=run_for_s + pickup_timeout_s),
        heartbeat_timeout=timedelta(seconds=heartbeat_timeout_s),
        retry_policy=retry,
        result_type=result_type,
        cancellation_type=cancellation,
    )


@dataclass
class Run:
    """One execution of the job (or of its verifier) on one provider."""

    alloc: c.Allocation
    payer: str = "client"
    purpose: str = "run"  # or "verify": the client's verifier over the accepted outputs
    started: datetime | None = None
    executed: c.ExecuteResult | None = None
    uploaded: c.UploadResult | None = None

    def report(self) -> c.ReplicaReport:
        assert self.executed is not None and self.uploaded is not None
        return c.ReplicaReport(
            self.alloc.attempt, self.alloc.provider_id, self.alloc.price_per_gpu_hour_micro,
            self.executed.exit_code, self.executed.timed_out, self.executed.gpu_ms,
            self.uploaded.manifest, self.uploaded.missing, self.payer, self.uploaded.refused,
        )


@workflow.defn
class JobWorkflow:
    def __init__(self) -> None:
        self._searchable = False  # set in run(): may this workflow upsert its attributes?
        self._shown_state = "SUBMITTED"  # GpgpuState as the API set it at start
        self._step = "admit"
        self._attempts = 0
        self._runs: list[Run] = []  # every allocation that got GPUs, in order
        self._lost: list[str] = []
        self._failed: list[str] = []  # providers that failed a step of theirs for this job
        self._check_wait_s = 0.0
        self._replica_wait_s = 0.0
        self._settlement: c.Settlement | None = None  # once SETTLE_JOB answered
        # The settlement asked for, once asked: a cancel that interrupts it asks it again
        # (the step may have completed in the stores), never a different one.
        self._settle_request: c.SettleRequest | None = None

    @property
    def _step(self) -> str:
        return self._step_name

    @_step.setter
    def _step(self, step: str) -> None:
        # Every step change is a state operators may search by (GpgpuState).
        self._step_name = step
        self._show_state(sa.STATE_OF_STEP.get(step))

    def _show_state(self, state: str | None) -> None:
        """Keep GpgpuState current, where the workflow was started with its attributes."""
        if state is None or state == self._shown_state or not self._searchable:
            return
        workflow.upsert_search_attributes([sa.STATE.value_set(state)])
        self._shown_state = state

    @workflow.query
    def progress(self) -> dict[str, Any]:
        live = [r.alloc.provider_id for r in self._runs if r.executed is None]
        return {"step": self._step, "providers": live, "lost": list(self._lost),
                "failed": list(self._failed)}

    async def _control(self, name: str, arg: Any, result_type: type[T] | None = None) -> T:
        """A short step on the stores, idempotent: retried as it is, even twice at once.

        A local activity: it runs in the control worker that runs this workflow, inside its
        workflow task, with no round trip through the Temporal server."""
        return await workflow.execute_local_activity(
            name,
            arg,
            start_to_close_timeout=timedelta(seconds=c.CONTROL_STEP_S),
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
        try:
            return await gpu_step(
                provider_id, inp.gpu_schedule_to_start_timeout_s, inp.gpu_heartbeat_timeout_s,
                name, arg, result_type, run_for_s, retry, cancellation,
            )
        except ActivityError as err:
            if _is_provider_loss(err):
                raise ProviderLostError(f"{provider_id} stopped answering during {name}") from err
            if is_cancelled_exception(err) or _cancel_requested() or _ended(inp, err):
                raise
            # The provider's own error (the API refuses the control plane's error types).
            raise ProviderFailed(f"{provider_id} failed its {name} step: {_reason(err)}") from err

    @workflow.run
    async def run(self, inp: c.JobInput) -> c.JobResult:
        # A server without the attributes registered would fail every upsert: the API
        # started this workflow with them only where the server has them.
        self._searchable = sa.CLIENT in workflow.info().typed_search_attributes
        try:
            result = await self._run(inp)
        except (asyncio.CancelledError, ActivityError, ApplicationError) as err:
            ended = _ended(inp, err)
            if ended is not None:  # a reset re-ran a step of a job that had ended
                result = ended
            elif is_cancelled_exception(err) or _cancel_requested():
                # A cancel that reached an activity as it failed for its own reason (a
                # wait for GPUs that timed out) is still the client's cancel.
                result = await self._cancelled(inp)
            else:
                raise
        self._show_state(result.state)
        return result

    async def _run(self, inp: c.JobInput) -> c.JobResult:
        admitted = await self._control(c.ADMIT_JOB, inp, c.AdmitResult)
        if admitted.ended is not None:  # a reset re-ran this job's workflow: nothing runs
            return _result(inp, admitted.ended)
        if not admitted.admitted:
            return c.JobResult(inp.job_id, "REJECTED", admitted.reason)
        self._check_wait_s, self._replica_wait_s = admitted.check_wait_s, admitted.replica_wait_s
        try:
            runs = await self._replicas(inp, max(1, admitted.replicas))
        except AllProvidersLost as lost:
            return await self._refund_and_fail(inp, str(lost))
        except Unplaced as unplaced:
            return await self._refund_and_fail(inp, str(unplaced))
        except ActivityError as err:
            if is_cancelled_exception(err) or _ended(inp, err) is not None:
                raise
            # A control step refused the job for good (an input not pinned at submission).
            # A provider's own failure never arrives here: its run goes elsewhere (_one_run).
            return await self._close(inp, [], _reason(err))

        if admitted.replicas <= 1:
            check = await self._control(
                c.PLAN_CHECK,
                c.CheckRequest(inp.job_id, runs[0].alloc.provider_id, workflow.random().random()),
                c.CheckDecision,
            )
            if check.run_check:
                # Unplaced: skipped (CheckSkipped), the job settles on the checks it had.
                with contextlib.suppress(Unplaced):
                    runs += await self._more_runs(inp, 1, payer="network")

        verdict = await self._verify(inp, runs)
        if not verdict.decided:  # two runs disagree: a third decides
            payer = "client" if admitted.replicas > 1 else "network"
            try:
                runs += await self._more_runs(inp, 1, payer=payer)
            except Unplaced as unplaced:
                if payer == "client":  # the client's tie-break: the job fails, refunded
                    return await self._refund_and_fail(inp, str(unplaced))
                # The network's check could not be settled: the job's own run stands alone,
                # judged by the checks every job gets; the check run decides nothing.
                runs = runs[:1]
            verdict = await self._verify(inp, runs)
        if verdict.succeeded and admitted.verifier:
            verdict = await self._run_verifier(inp, runs, verdict)
        return await self._close(inp, runs, "", verdict)

    # Runs

    async def _replicas(self, inp: c.JobInput, k: int) -> list[Run]:
        label = "replica" if k > 1 else "run"
        done = await asyncio.gather(
            *(self._one_run(inp, "client", label=label) for _ in range(k)),
            return_exceptions=True,
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return [r for r in done if isinstance(r, Run)]

    async def _more_runs(self, inp: c.JobInput, n: int, payer: str) -> list[Run]:
        """Runs after the first ones: the network's check, a tie-break. Unplaced if bounded."""
        label = "check" if payer == "network" else "tie-break"
        try:
            return [await self._one_run(inp, payer, label=label) for _ in range(n)]
        except AllProvidersLost:
            return []  # a check that cannot be placed is skipped, not fatal

    def _bound_s(self, label: str) -> float:
        """How long this kind of run may wait for GPUs; 0: as long as it takes."""
        if label == "check":
            return self._check_wait_s
        return self._replica_wait_s if label != "run" else 0.0

    async def _allocate(self, inp: c.JobInput, attempt: int, label: str) -> c.Allocation:
        busy = [r.alloc.provider_id for r in self._runs]
        handle = workflow.start_activity(
            c.ALLOCATE_GPUS,
            c.AllocateRequest(inp.job_id, attempt, _unique(self._lost + self._failed + busy)),
            task_queue=workflow.info().task_queue,
            start_to_close_timeout=timedelta(seconds=c.CONTROL_STEP_S),
            retry_policy=QUEUE_RETRY,
            result_type=c.Allocation,
            # A cancel must not race an allocation that is being written.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            # The scheduler heartbeats each second it waits: a cancel reaches the try in
            # seconds (unset, heartbeats were throttled to 30 s, past the try's own end).
            heartbeat_timeout=timedelta(seconds=ALLOCATE_HEARTBEAT_S),
        )
        bound = self._bound_s(label)
        if not bound:
            return await handle
        try:
            if label == "replica":  # the clock starts once another replica holds GPUs
                await workflow.wait_condition(lambda: handle.done() or bool(self._runs))
            await workflow.wait_condition(handle.done, timeout=timedelta(seconds=bound))
        except asyncio.TimeoutError:  # noqa: UP041 (TimeoutError here is Temporal's)
            handle.cancel()
            # Wait for the try to stop (its scheduler ticket then leaves the line). It ends
            # cancelled, or failed for want of GPUs (a server does not retry a try that was
            # asked to cancel), or placed just then: the run does not start either way.
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                await handle
            # Placed as the wait ended or not, the run does not start: record_unplaced
            # frees any GPUs it got, and a later placement of this attempt is refused.
            reason = _unplaced_reason(label, bound)
            await self._control(
                c.RECORD_UNPLACED, c.UnplacedRun(inp.job_id, attempt, label, reason)
            )
            raise Unplaced(reason) from None
        except asyncio.CancelledError:
            handle.cancel()  # the job is cancelled: stop waiting in line
            raise
        return await handle

    async def _one_run(
        self, inp: c.JobInput, payer: str, purpose: str = "run", source_attempt: int = 0,
        label: str = "run",
    ) -> Run:
        """Allocate, stage, execute, upload; on a lost provider, or one that failed its step
        with an error of its own, again elsewhere (at most max_provider_attempts in all)."""
        failures: list[tuple[int, str, str]] = []  # (attempt, provider, why) of failed runs
        for _ in range(inp.max_provider_attempts):
            self._attempts += 1
            attempt = self._attempts
            self._step = "allocate"
            try:
                # After a failure the run waits for another provider, but not for ever: the
                # job may be what no provider can run (an input changed, an image missing).
                alloc = await self._allocate(
                    inp, attempt, "retry" if failures and label == "run" else label)
            except Unplaced as unplaced:
                if failures:
                    raise Unplaced(f"{failures[-1][2]}; {unplaced}") from None
                raise
            run = Run(alloc, payer, purpose)
            self._runs.append(run)
            try:
                await self._run_on_provider(inp, run, purpose, source_attempt)
            except ProviderLostError as lost:
                await self._control(
                    c.MARK_PROVIDER_LOST,
                    c.ProviderLost(inp.job_id, attempt, alloc.provider_id, str(lost)),
                )
                self._runs.remove(run)
                self._lost.append(alloc.provider_id)
                continue
            except ProviderFailed as failed:
                await self._control(
                    c.RECORD_RUN_FAILED,
                    c.RunFailed(inp.job_id, attempt, alloc.provider_id, str(failed)),
                )
                self._runs.remove(run)
                self._failed.append(alloc.provider_id)
                failures.append((attempt, alloc.provider_id, str(failed)))
                continue
            # Another provider got through where these failed: the failures were theirs, not
            # the job's (a job no provider can run blames none of them).
            for failed_attempt, provider_id, _ in failures:
                await self._control(c.RECORD_REPUTATION, c.ReputationRequest(
                    f"{inp.job_id}#{failed_attempt}", provider_id, "failure"))
            return run
        if failures:
            raise AllProvidersLost(
                f"{len(failures)} providers failed the job and {len(self._lost)} were lost; "
                f"the last: {failures[-1][2]}"
            )
        raise AllProvidersLost(
            f"lost {len(self._lost)} providers in a row: {', '.join(self._lost)}"
        )

    async def _run_on_provider(
        self, inp: c.JobInput, run: Run, purpose: str, source_attempt: int
    ) -> None:
        pid, attempt = run.alloc.provider_id, run.alloc.attempt
        request = c.AllocateRequest(inp.job_id, attempt)
        if purpose != "run":
            request = c.AllocateRequest(inp.job_id, attempt, [], purpose, source_attempt)
        plan = await self._control(c.PREPARE_TRANSFERS, request, c.TransferPlan)
        self._step = "stage"
        if not plan.inputs:
            staged = c.StageResult(0, 0)  # nothing to fetch: execute makes the work dir
        else:
            staged = await self._gpu(
                inp, pid, c.STAGE_INPUTS, c.StageRequest(inp.job_id, attempt, plan.inputs),
                c.StageResult, TRANSFER_S,
            )
        # "Inputs staged" and "execution started" in one step: one round trip less.
        await self._control(c.RECORD_JOB_STEPS, c.JobSteps([
            c.JobStep(inp.job_id, "inputs_staged", pid, attempt, files=staged.files,
                      bytes=staged.bytes),
            c.JobStep(inp.job_id, "execution_started", pid, attempt),
        ]))
        self._step = "execute"
        run.started = workflow.now()
        executed = await self._gpu(
            inp, pid, c.EXECUTE_JOB,
            c.ExecuteRequest(
                inp.job_id, attempt, plan.command, run.alloc.gpu_indexes, plan.timeout_s,
                plan.env, plan.image, plan.network, plan.checkpoint,
            ),
            c.ExecuteResult, plan.timeout_s + 60.0,
            # Never run a job twice on the same provider: a lost run is re-allocated.
            retry=RetryPolicy(maximum_attempts=1),
            # On cancel, settle only once the process has really stopped.
            cancellation=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        run.executed = executed
        await self._step_done(c.JobStep(
            inp.job_id, "execution_finished", pid, attempt, exit_code=executed.exit_code,
            timed_out=executed.timed_out, gpu_ms=executed.gpu_ms, log_tail=executed.log_tail,
        ))
        if purpose != "run":
            run.uploaded = c.UploadResult([], [])
            await self._release_run(inp, run)
            return
        self._step = "upload"
        uploaded = await self._gpu(
            inp, pid, c.UPLOAD_OUTPUTS, c.UploadRequest(inp.job_id, attempt, plan.outputs),
            c.UploadResult, TRANSFER_S,
        )
        run.uploaded = uploaded
        await self._step_done(c.JobStep(
            inp.job_id, "outputs_uploaded", pid, attempt,
            manifest=uploaded.manifest, missing=uploaded.missing,
        ))
        await self._release_run(inp, run)

    async def _release_run(self, inp: c.JobInput, run: Run) -> None:
        """A finished run holds no GPU while the job verifies, waits for a check, settles."""
        await self._control(
            c.RELEASE_RUN,
            c.ReleaseRunRequest(inp.job_id, run.alloc.attempt, run.alloc.provider_id),
        )

    async def _step_done(self, step: c.JobStep) -> None:
        await self._control(c.RECORD_JOB_STEP, step)

    # Verification

    async def _verify(self, inp: c.JobInput, runs: list[Run]) -> c.Verdict:
        self._step = "verify"
        first, others = runs[0].report(), [r.report() for r in runs[1:]]
        return await self._control(
            c.VERIFY_JOB,
            c.VerifyRequest(
                inp.job_id, first.attempt, first.provider_id, first.exit_code, first.timed_out,
                first.manifest, first.missing, others, first.refused,
            ),
            c.Verdict,
        )

    async def _run_verifier(
        self, inp: c.JobInput, runs: list[Run], verdict: c.Verdict
    ) -> c.Verdict:
        """The client's verifier command, over the accepted outputs, on another provider."""
        self._step = "verifier"
        try:
            check = await self._one_run(
                inp, "client", purpose="verify", source_attempt=verdict.accepted_attempts[0],
                label="verifier",
            )
        except (AllProvidersLost, Unplaced) as lost:
            return c.Verdict(True, False, f"the verifier could not run: {lost}",
                             verdict.accepted_attempts, verdict.mismatched_attempts)
        runs.append(check)
        assert check.executed is not None
        if check.executed.exit_code == 0:
            return verdict
        code = "timed out" if check.executed.timed_out else f"exited {check.executed.exit_code}"
        return c.Verdict(
            True, False, f"the verifier rejected the outputs ({code}): {check.executed.log_tail}",
            verdict.accepted_attempts, verdict.mismatched_attempts,
        )

    # Endings

    async def _close(
        self,
        inp: c.JobInput,
        runs: list[Run],
        failure: str,
        verdict: c.Verdict | None = None,
    ) -> c.JobResult:
        """Settle, record reputation, release: the same tail for every ending."""
        if verdict is None:
            verdict = c.Verdict(False, False, failure)
        held = [r for r in self._runs if r not in runs] + runs
        self._step = "settle"
        accepted = set(verdict.accepted_attempts)
        unproven = {r.alloc.attempt for r in runs if _unproven_timeout(r, runs)}
        # Paid: every run whose result was accepted, and the verifier's run; an unproven
        # timeout is charged all the same, but its provider is not paid for it.
        request = c.SettleRequest(inp.job_id, "", 0, 0, False, payments=[
            c.PaymentLine(r.alloc.provider_id, r.executed.gpu_ms,
                          r.alloc.price_per_gpu_hour_micro, r.payer,
                          withheld=r.alloc.attempt in unproven)
            for r in runs
            if r.executed is not None
            and (r.alloc.attempt in accepted or r.purpose == "verify")
        ])
        self._settle_request = request
        settlement = await self._control(c.SETTLE_JOB, request, c.Settlement)
        self._settlement = settlement
        self._step = "reputation"
        mismatched = set(verdict.mismatched_attempts)
        for r in runs:
            if r.executed is None:
                continue
            if r.alloc.attempt in unproven:
                outcome = "timeout"
            elif len(runs) == 1:
                outcome = "success" if verdict.accepted else "mismatch"
            else:
                outcome = "mismatch" if r.alloc.attempt in mismatched else "success"
            await self._control(
                c.RECORD_REPUTATION,
                c.ReputationRequest(_outcome_key(inp.job_id, r, runs), r.alloc.provider_id,
                                    outcome),
            )
        for r in held:
            await self._control(c.RELEASE_GPUS, c.ReleaseRequest(inp.job_id, r.alloc.provider_id))
        await self._control(
            c.FINISH_JOB, c.FinishRequest(inp.job_id, verdict.succeeded, verdict.reason)
        )
        # A known-answer canary may follow each provider whose run was accepted, at
        # its canary rate; it runs on its own (abandoned) and never holds up the job.
        trusted = _unique([r.alloc.provider_id for r in runs if r.executed is not None
                           and r.purpose == "run" and r.alloc.attempt in accepted])
        for pid in trusted:
            try:
                plan = await self._control(
                    c.PLAN_CANARY,
                    c.CanaryRequest(inp.job_id, pid, workflow.random().random()),
                    c.CanaryPlan,
                )
                if plan.run:
                    await workflow.start_child_workflow(
                        c.CANARY_WORKFLOW,
                        c.CanaryInput(inp.job_id, pid, plan.seed, plan.delay_s,
                                      inp.gpu_heartbeat_timeout_s,
                                      inp.gpu_schedule_to_start_timeout_s),
                        id=c.canary_workflow_id(inp.job_id, pid),
                        task_queue=workflow.info().task_queue,
                        parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    )
            except (asyncio.CancelledError, ActivityError, WorkflowAlreadyStartedError) as err:
                if is_cancelled_exception(err):
                    break  # the job has finished: a cancel now only stops the canaries
                workflow.logger.warning("no canary for %s: %s", pid, err)
        self._step = "done"
        state = "SUCCEEDED" if verdict.succeeded else "FAILED"
        provider = held[0].alloc.provider_id if held else ""
        chosen = [r for r in runs if r.alloc.attempt in accepted and r.purpose == "run"]
        if chosen:  # the provider whose result the job kept, not the last one allocated
            provider = chosen[0].alloc.provider_id
        return c.JobResult(inp.job_id, state, verdict.reason, provider, settlement.charged_micro)

    async def _refund_and_fail(self, inp: c.JobInput, reason: str) -> c.JobResult:
        # No run of the job was verified: the whole escrow goes back, no provider is paid.
        refund = c.SettleRequest(
            inp.job_id, self._lost[-1] if self._lost else "", 0, 0, pay_provider=False
        )
        self._settle_request = refund
        self._settlement = await self._control(c.SETTLE_JOB, refund, c.Settlement)
        for r in self._runs:  # replicas that finished while another could not be placed
            await self._control(c.RELEASE_GPUS, c.ReleaseRequest(inp.job_id, r.alloc.provider_id))
        await self._control(c.FINISH_JOB, c.FinishRequest(inp.job_id, False, reason))
        return c.JobResult(inp.job_id, "FAILED", reason)

    async def _cancelled(self, inp: c.JobInput) -> c.JobResult:
        """The client cancelled: pay for the GPU time used, refund the rest, free the GPUs."""
        self._step = "cancel"
        reason = "cancelled by the client"
        now = workflow.now()
        payments = []
        for r in self._runs:
            if r.executed is not None:
                gpu_ms = r.executed.gpu_ms
            elif r.started is not None:
                elapsed_ms = int((now - r.started).total_seconds() * 1000)
                gpu_ms = elapsed_ms * len(r.alloc.gpu_indexes)
            else:
                continue
            payments.append(c.PaymentLine(
                r.alloc.provider_id, gpu_ms, r.alloc.price_per_gpu_hour_micro, r.payer
            ))
        # Admission is idempotent: this returns what happened, or admits now so we can refund.
        admitted = await self._control(c.ADMIT_JOB, inp, c.AdmitResult)
        if admitted.ended is not None:  # it had ended before the cancel reached it
            return _result(inp, admitted.ended)
        charged = 0
        if self._settlement is not None:  # settled before the cancel: that stands
            charged = self._settlement.charged_micro
        elif self._settle_request is not None:  # the cancel interrupted the settlement
            again = await self._control(c.SETTLE_JOB, self._settle_request, c.Settlement)
            charged = again.charged_micro
        elif admitted.admitted:
            if len(payments) <= 1 and len(self._runs) <= 1:
                only = self._runs[0].alloc if self._runs else None
                settle = c.SettleRequest(
                    inp.job_id, only.provider_id if only else "",
                    payments[0].gpu_ms if payments else 0,
                    only.price_per_gpu_hour_micro if only else 0,
                    pay_provider=bool(payments) and payments[0].gpu_ms > 0,
                )
            else:
                settle = c.SettleRequest(inp.job_id, "", 0, 0, False, payments=payments)
            charged = (await self._control(c.SETTLE_JOB, settle, c.Settlement)).charged_micro
        for r in self._runs:
            await self._control(c.RELEASE_GPUS, c.ReleaseRequest(inp.job_id, r.alloc.provider_id))
        await self._control(
            c.FINISH_JOB, c.FinishRequest(inp.job_id, False, reason, cancelled=True)
        )
        self._step = "done"
        provider = self._runs[0].alloc.provider_id if self._runs else ""
        return c.JobResult(inp.job_id, "CANCELLED", reason, provider, charged)


def _cancel_requested() -> bool:
    """Whether the workflow has been asked to cancel (its main task was cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _ended(inp: c.JobInput, err: BaseException) -> c.JobResult | None:
    """The job's recorded ending, when a step refused to run again for a job that ended.
    (A local activity's refusal arrives as the ApplicationError itself.)"""
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError) and cause.type == c.JOB_ENDED:
        details = cause.details[0] if cause.details else {}
        if isinstance(details, dict):
            try:
                return _result(inp, c.EndedJob(**details))
            except TypeError:  # not the control plane's record of an ending
                return None
        return c.JobResult(inp.job_id, "FAILED", cause.message)
    return None


def _result(inp: c.JobInput, ended: c.EndedJob) -> c.JobResult:
    return c.JobResult(inp.job_id, ended.state, ended.reason, ended.provider_id,
                       ended.charged_micro)


def _unplaced_reason(label: str, bound_s: float) -> str:
    what = {"check": "the network's check", "replica": "a replica",
            "tie-break": "the tie-break", "verifier": "the verifier",
            "retry": "the run, once a provider failed it,"}.get(label, "a run")
    return f"{what} found no independent provider within {bound_s:g} s"


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _unproven_timeout(run: Run, runs: list[Run]) -> bool:
    """A run that timed out with no output, and that no other run of the job checked: the
    window it would be paid for is one its provider chose (heartbeating without running,
    then reporting a timeout), and nothing shows work was done. The client pays for it all
    the same (its job was given the GPUs; so a client gains nothing from a job that never
    ends), the provider is not paid, and it is recorded as a `timeout`."""
    ran = [r for r in runs if r.purpose == "run"]
    return (len(ran) == 1 and ran[0] is run and run.executed is not None and run.executed.timed_out
            and run.uploaded is not None and not run.uploaded.manifest)


def _outcome_key(job_id: str, run: Run, runs: list[Run]) -> str:
    """Reputation records one outcome per provider and job (per run when there are several)."""
    return job_id if len(runs) == 1 else f"{job_id}#{run.alloc.attempt}"


def _reason(err: ActivityError) -> str:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type}: {cause.message}"
    return str(cause or err)
