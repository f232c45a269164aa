"""How a job ends: settle, record reputation, release the GPUs, finish (JobWorkflow's tail),
all four in one control step (CLOSE_JOB) and one transaction of the stores.

A base of JobWorkflow (workflows/job.py), in the workflow sandbox: deterministic, every
effect a control step; the arithmetic of who is paid what lives in workflows/runs.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    import workflows.contracts as c
    import workflows.runs as runs_
    import workflows.steps as st
    from workflows.runs import Run

T = TypeVar("T")


class JobEndings:
    """The endings of a job: every one settles, releases and finishes it, once."""

    _step: str
    _runs: list[Run]
    _lost: list[str]
    _closing: c.CloseRequest | None

    async def _control(self, name: str, arg: Any, result_type: type[T] | None = None) -> T:
        raise NotImplementedError  # JobWorkflow's: a local activity on the stores

    async def _close(
        self,
        inp: c.JobInput,
        runs: list[Run],
        failure: str,
        verdict: c.Verdict | None = None,
    ) -> c.JobResult:
        """Settle, record reputation, release, finish: the same tail for every ending."""
        if verdict is None:
            verdict = c.Verdict(False, False, failure)
        held = [r for r in self._runs if r not in runs] + runs
        self._step = "settle"
        settlement = await self._close_job(c.CloseRequest(
            runs_.settlement(inp.job_id, runs, verdict),
            runs_.outcomes(inp.job_id, runs, verdict),
            [r.alloc.provider_id for r in held],
            c.FinishRequest(inp.job_id, verdict.succeeded, verdict.reason),
        ))
        # A known-answer canary may follow each provider whose run was accepted, at
        # its canary rate; it runs on its own (abandoned) and never holds up the job.
        # One follows each outvoted provider whenever canaries run (draw 0): a canary is
        # the evidence against it that the client cannot shape (runs_.outvoted).
        draws = [(pid, workflow.random().random()) for pid in runs_.trusted(runs, verdict)]
        draws += [(r.alloc.provider_id, 0.0) for r in runs_.outvoted(runs, verdict)]
        for pid, draw in draws:
            try:
                plan = await self._control(
                    c.PLAN_CANARY, c.CanaryRequest(inp.job_id, pid, draw), c.CanaryPlan,
                )
                if plan.run:
                    await workflow.start_child_workflow(
                        c.CANARY_WORKFLOW,
                        c.CanaryInput(inp.job_id, pid, plan.seed, plan.delay_s,
                                      inp.gpu_heartbeat_timeout_s,
                                      inp.gpu_schedule_to_start_timeout_s,
                                      inp.gpu_outage_grace_s),
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
        provider = runs_.kept_provider(held, runs, verdict)
        return c.JobResult(inp.job_id, state, verdict.reason, provider, settlement.charged_micro)

    async def _refund_and_fail(self, inp: c.JobInput, reason: str) -> c.JobResult:
        # No run of the job was verified: the whole escrow goes back, no provider is paid.
        refund = c.SettleRequest(
            inp.job_id, self._lost[-1] if self._lost else "", 0, 0, pay_provider=False
        )
        await self._close_job(c.CloseRequest(
            refund, [],
            # The replicas that finished while another could not be placed.
            [r.alloc.provider_id for r in self._runs],
            c.FinishRequest(inp.job_id, False, reason),
        ))
        return c.JobResult(inp.job_id, "FAILED", reason)

    async def _close_job(self, closing: c.CloseRequest) -> c.Settlement:
        """The close, asked once: a cancel that interrupts it asks the same settlement and
        outcomes again (the step may have completed in the stores), never other ones."""
        self._closing = closing
        return await self._control(c.CLOSE_JOB, closing, c.Settlement)

    async def _cancelled(self, inp: c.JobInput) -> c.JobResult:
        """The client cancelled: pay for the GPU time used, refund the rest, free the GPUs."""
        self._step = "cancel"
        reason = "cancelled by the client"
        payments = runs_.used_so_far(self._runs, workflow.now())
        # Admission is idempotent: this returns what happened, or admits now so we can refund.
        admitted = await self._control(c.ADMIT_JOB, inp, c.AdmitResult)
        if admitted.ended is not None:  # it had ended before the cancel reached it
            return st.result_of(inp, admitted.ended)
        # (A close that completed ended the job: admission said so above.)
        charged = 0
        settle: c.SettleRequest | None = None
        outcomes: list[c.ReputationRequest] = []
        if self._closing is not None:  # the cancel interrupted the close: asked again
            settle, outcomes = self._closing.settle, self._closing.outcomes
        elif admitted.admitted:
            settle = runs_.cancel_settlement(inp.job_id, self._runs, payments)
        closed = await self._control(c.CLOSE_JOB, c.CloseRequest(
            settle, outcomes, [r.alloc.provider_id for r in self._runs],
            c.FinishRequest(inp.job_id, False, reason, cancelled=True),
        ), c.Settlement)
        if closed.ended is not None and closed.ended.state != "CANCELLED":
            # The interrupted close went on in its thread and ended the job first: that
            # ending stands (the same settlement and outcomes either way).
            return st.result_of(inp, closed.ended)
        if settle is not None:
            charged = closed.charged_micro
        self._step = "done"
        provider = self._runs[0].alloc.provider_id if self._runs else ""
        return c.JobResult(inp.job_id, "CANCELLED", reason, provider, charged)

