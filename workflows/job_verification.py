"""How a job's runs are judged: the network's check, a tie-break, the client's verifier.

A base of JobWorkflow (workflows/job.py), in the workflow sandbox: deterministic, every
effect a control step or a run (JobWorkflow's `_one_run`); who is paid for which run, and
each run's outcome, are workflows/runs.py's.

A run whose provider alone says it came to nothing (its command failed, or exited 0 with an
output missing: runs_.unproven_ending) is always checked by the network on a provider of
another owner; otherwise the network checks a provider's work at a rate that falls as the
provider earns trust (activities/control.py `plan_check`). Two runs that disagree are
decided by a third (a tie-break); a client may also ask for a verifier command, run over
the accepted outputs on yet another provider.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import workflows.contracts as c
    import workflows.runs as runs_
    from workflows.runs import Run
    from workflows.steps import AllProvidersLost, Unplaced

T = TypeVar("T")


class JobVerification:
    """The judging of a job's runs, between its runs and its ending."""

    _step: str

    async def _control(self, name: str, arg: Any, result_type: type[T] | None = None) -> T:
        raise NotImplementedError  # JobWorkflow's: a local activity on the stores

    async def _one_run(
        self, inp: c.JobInput, payer: str, purpose: str = "run", source_attempt: int = 0,
        label: str = "run",
    ) -> Run:
        raise NotImplementedError  # JobWorkflow's: allocate, stage, execute, upload

    async def _more_runs(self, inp: c.JobInput, n: int, payer: str) -> list[Run]:
        """Runs after the first ones: the network's check, a tie-break. Unplaced if bounded."""
        label = "check" if payer == "network" else "tie-break"
        try:
            return [await self._one_run(inp, payer, label=label) for _ in range(n)]
        except AllProvidersLost:
            return []  # a check that cannot be placed is skipped, not fatal

    async def _judged(
        self, inp: c.JobInput, runs: list[Run], admitted: c.AdmitResult
    ) -> tuple[list[Run], c.Verdict]:
        """The runs the job is settled on and their verdict, after any check, tie-break and
        verifier. Unplaced: the client's own tie-break found no provider (the job fails,
        refunded)."""
        if admitted.replicas <= 1:
            check = await self._control(
                c.PLAN_CHECK,
                c.CheckRequest(inp.job_id, runs[0].alloc.provider_id, workflow.random().random()),
                c.CheckDecision,
            )
            # A failed or empty-handed run is always checked: only an independent run tells a
            # provider that skipped the work from a job that fails or writes nothing.
            if check.run_check or runs_.unproven_ending(runs[0]):
                # Unplaced: skipped (CheckSkipped), the job settles on the checks it had.
                with contextlib.suppress(Unplaced):
                    runs += await self._more_runs(inp, 1, payer="network")

        verdict = await self._verify(inp, runs)
        if not verdict.decided:  # two runs disagree: a third decides
            payer = "client" if admitted.replicas > 1 else "network"
            try:
                runs += await self._more_runs(inp, 1, payer=payer)
            except Unplaced:
                if payer == "client":  # the client's tie-break: the job fails, refunded
                    raise
                # The network's check could not be settled: the job's own run stands alone,
                # judged by the checks every job gets; the check run decides nothing.
                runs = runs[:1]
            verdict = await self._verify(inp, runs)
        if verdict.succeeded and admitted.verifier:
            verdict = await self._run_verifier(inp, runs, verdict)
        return runs, verdict

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
