"""JobWorkflow: one client job, durable from admission to reputation.

Deterministic: no I/O, no clocks, no randomness here; everything that touches
the world is an activity. Control activities run on the workflow's own task
queue (`control` unless configured otherwise); stage, execute and upload run
there too, as assignments the allocated provider takes from the API. A provider
that stops heartbeating (or never picks its work up) is marked lost and that run
goes back to allocation, where the job's own run takes it again only as a last resort
and only once (runs_.lost_once), waiting at most GPGPU_REPLICA_WAIT_S (then FAILED,
refunded); the next attempt starts from the checkpoint
the job last wrote on a provider of the same owner, if any (worker_gpu/checkpoint.py).
A provider that fails its step with an error of its own is treated alike (RunFailed),
and blamed (`failure`) once another provider got through; so is a step that ran past
its start-to-close limit while its provider still answered (steps.overran: a provider
that heartbeats and never finishes is no lost provider, nor a blameless one; outputs too
large for anyone to move in time blame none, as no other gets through either). A run that
timed out with no output, unchecked, is charged but not paid to its provider (`timeout`);
a run whose command failed, or exited 0 with outputs missing, is always checked, and
unless another run reproduces it is charged but not paid, and changes no reputation.

Verification (workflows/job_verification.py): every run's manifest is checked against
storage. A client may ask for k replicas on distinct providers (a majority of matching
outputs decides; with two that disagree a third breaks the tie) and for a verifier command
run on yet another provider; the network adds its own replicated check to a provider's
work at a rate that falls as the provider earns trust.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    import workflows.contracts as c
    import workflows.runs as runs_
    import workflows.search_attributes as sa
    import workflows.steps as st
    from workflows.job_endings import JobEndings
    from workflows.job_verification import JobVerification
    from workflows.runs import Run
    from workflows.steps import (
        ALLOCATE_HEARTBEAT_S,
        CONTROL_RETRY,
        GPU_RETRY,
        QUEUE_RETRY,
        TRANSFER_S,
        AllProvidersLost,
        ProviderFailed,
        ProviderLostError,
        Unplaced,
    )

T = TypeVar("T")

# JobWorkflow has no `workflow.patched` branches: the versions written while the network was
# developed were folded into this one before the first release (tests/replay/ holds
# histories of this version). After a release, a change of its logic goes behind a patch.
OWN_RUN = ("run", "retry", "rerun")  # the labels of the job's own (single) run's tries


@workflow.defn
class JobWorkflow(JobVerification, JobEndings):
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
        # The close asked for, once asked: a cancel that interrupts it asks its settlement
        # and outcomes again (the step may have completed in the stores), never others.
        self._closing: c.CloseRequest | None = None
        self._ids = st.StepIds()  # each step's activity id (the codec seals for it)

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
            activity_id=self._ids.next(name, arg),
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
            return await st.gpu_step(
                provider_id, inp.gpu_schedule_to_start_timeout_s, inp.gpu_heartbeat_timeout_s,
                inp.gpu_outage_grace_s, name, arg, result_type, run_for_s,
                self._ids.next(name, arg), retry, cancellation,
            )
        except ActivityError as err:
            if st.is_provider_loss(err):
                raise ProviderLostError(f"{provider_id} stopped answering during {name}") from err
            if st.overran(err):
                raise ProviderFailed(
                    f"{provider_id} did not finish its {name} step within its time limit "
                    "(still answering)") from err
            if (is_cancelled_exception(err) or st.cancel_requested() or st.ended(inp, err)
                    or st.spent(err)):
                raise
            # The provider's own error (the API refuses the control plane's error types).
            raise ProviderFailed(f"{provider_id} failed its {name} step: {st.reason(err)}") from err

    @workflow.run
    async def run(self, inp: c.JobInput) -> c.JobResult:
        # A server without the attributes registered would fail every upsert: the API
        # started this workflow with them only where the server has them.
        self._searchable = sa.CLIENT in workflow.info().typed_search_attributes
        try:
            result = await self._run(inp)
        except (asyncio.CancelledError, ActivityError, ApplicationError) as err:
            ended = st.ended(inp, err)
            if ended is not None:  # a reset re-ran a step of a job that had ended
                result = ended
            elif is_cancelled_exception(err) or st.cancel_requested():
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
            return st.result_of(inp, admitted.ended)
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
            if is_cancelled_exception(err) or st.ended(inp, err) is not None:
                raise
            # A control step refused the job for good (an input not pinned at submission).
            # A provider's own failure never arrives here: its run goes elsewhere (_one_run).
            return await self._close(inp, [], st.reason(err))

        try:
            runs, verdict = await self._judged(inp, runs, admitted)
        except Unplaced as unplaced:  # the client's tie-break found no provider
            return await self._refund_and_fail(inp, str(unplaced))
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

    def _bound_s(self, label: str) -> float:
        """How long this kind of run may wait for GPUs; 0: as long as it takes.

        Only the job's first try of its own run waits in the queue as long as it takes; once
        a provider failed it ("retry") or was lost with it ("rerun"), the run waits at most
        GPGPU_REPLICA_WAIT_S, or a job whose only fitting provider died would hold its
        escrow for ever."""
        if label == "check":
            return self._check_wait_s
        return self._replica_wait_s if label != "run" else 0.0

    async def _allocate(self, inp: c.JobInput, attempt: int, label: str) -> c.Allocation:
        busy = [r.alloc.provider_id for r in self._runs]
        # The job's own run may go back to a provider lost once, last (runs_.lost_once).
        avoided = runs_.lost_once(self._lost) if label in OWN_RUN else []
        excluded = runs_.unique(
            [p for p in self._lost if p not in avoided] + self._failed + busy)
        request = c.AllocateRequest(inp.job_id, attempt, excluded, avoided_provider_ids=[
            p for p in avoided if p not in excluded])
        handle = workflow.start_activity(
            c.ALLOCATE_GPUS,
            request,
            activity_id=self._ids.next(c.ALLOCATE_GPUS, request),
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
            reason = runs_.unplaced_reason(label, bound)
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
        with an error of its own, again elsewhere; on an attempt a reset's new run cannot
        take over, again as a fresh attempt (at most max_provider_attempts in all)."""
        failures: list[tuple[int, str, str]] = []  # (attempt, provider, why) of failed runs
        losses: list[tuple[int, str, str]] = []  # (attempt, provider, why) of lost runs
        left: list[str] = []  # why each attempt a reset left was not taken over
        for _ in range(inp.max_provider_attempts):
            self._attempts += 1
            attempt = self._attempts
            self._step = "allocate"
            try:
                # After a failure or a loss the run waits for a provider, but not for ever:
                # the job may be what no provider can run (an input changed, an image
                # missing), or the one provider that fits may be gone for good.
                again = "retry" if failures else "rerun" if losses else label
                alloc = await self._allocate(inp, attempt, again if label == "run" else label)
            except Unplaced as unplaced:
                if failures or losses:
                    raise Unplaced(f"{runs_.setbacks(failures, losses)}; {unplaced}") from None
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
                losses.append((attempt, alloc.provider_id, str(lost)))
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
            except (ActivityError, ApplicationError) as err:
                if not st.spent(err) or st.cancel_requested():
                    raise
                # A reset's new run can neither run this attempt again (its work directory,
                # its output keys) nor take it over: no one's fault. Its GPUs go back, its
                # provider is not blamed, and nobody pays for it (it is no run of the job's).
                why = (st.reason(err) if isinstance(err, ActivityError) else str(err))[:500]
                await self._control(c.RECORD_UNPLACED,
                                    c.UnplacedRun(inp.job_id, attempt, c.ABANDONED, why))
                self._runs.remove(run)
                left.append(why)
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
        if losses:
            raise AllProvidersLost(
                f"lost {len(self._lost)} providers in a row: {', '.join(self._lost)}")
        raise AllProvidersLost(f"{len(left)} attempts in a row could not be taken over after "
                               f"a reset of the job's workflow; the last: {left[-1]}")

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
            retry=st.EXECUTE_RETRY,  # never twice on one provider: see there
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
