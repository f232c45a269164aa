"""A job's runs and what they come to: who is paid for which GPU time, and each run's outcome.

Pure bookkeeping for JobWorkflow (workflows/job.py): no I/O, no clock (the workflow passes
`now` in), deterministic; imported inside the workflow sandbox (passed through).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import workflows.contracts as c


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


def unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def unplaced_reason(label: str, bound_s: float) -> str:
    what = {"check": "the network's check", "replica": "a replica",
            "tie-break": "the tie-break", "verifier": "the verifier",
            "retry": "the run, once a provider failed it,"}.get(label, "a run")
    return f"{what} found no independent provider within {bound_s:g} s"


def unproven_timeout(run: Run, runs: list[Run]) -> bool:
    """A run that timed out with no output, and that no other run of the job checked: the
    window it would be paid for is one its provider chose (heartbeating without running,
    then reporting a timeout), and nothing shows work was done. The client pays for it all
    the same (its job was given the GPUs; so a client gains nothing from a job that never
    ends), the provider is not paid, and it is recorded as a `timeout`."""
    ran = [r for r in runs if r.purpose == "run"]
    return (len(ran) == 1 and ran[0] is run and run.executed is not None and run.executed.timed_out
            and run.uploaded is not None and not run.uploaded.manifest)


def outcome_key(job_id: str, run: Run, runs: list[Run]) -> str:
    """Reputation records one outcome per provider and job (per run when there are several)."""
    return job_id if len(runs) == 1 else f"{job_id}#{run.alloc.attempt}"


def unproven_attempts(runs: list[Run]) -> set[int]:
    return {r.alloc.attempt for r in runs if unproven_timeout(r, runs)}


def settlement(job_id: str, runs: list[Run], verdict: c.Verdict) -> c.SettleRequest:
    """Paid: every run whose result was accepted, and the verifier's run; an unproven
    timeout is charged all the same, but its provider is not paid for it."""
    accepted = set(verdict.accepted_attempts)
    unproven = unproven_attempts(runs)
    return c.SettleRequest(job_id, "", 0, 0, False, payments=[
        c.PaymentLine(r.alloc.provider_id, r.executed.gpu_ms,
                      r.alloc.price_per_gpu_hour_micro, r.payer,
                      withheld=r.alloc.attempt in unproven)
        for r in runs
        if r.executed is not None
        and (r.alloc.attempt in accepted or r.purpose == "verify")
    ])


def outcomes(job_id: str, runs: list[Run], verdict: c.Verdict) -> list[c.ReputationRequest]:
    """The reputation outcome of each run that executed, in the order of `runs`."""
    unproven = unproven_attempts(runs)
    mismatched = set(verdict.mismatched_attempts)
    out = []
    for r in runs:
        if r.executed is None:
            continue
        if r.alloc.attempt in unproven:
            outcome = "timeout"
        elif len(runs) == 1:
            outcome = "success" if verdict.accepted else "mismatch"
        else:
            outcome = "mismatch" if r.alloc.attempt in mismatched else "success"
        out.append(c.ReputationRequest(outcome_key(job_id, r, runs), r.alloc.provider_id,
                                       outcome))
    return out


def trusted(runs: list[Run], verdict: c.Verdict) -> list[str]:
    """The providers whose run of the job was accepted (a canary may follow each)."""
    accepted = set(verdict.accepted_attempts)
    return unique([r.alloc.provider_id for r in runs if r.executed is not None
                   and r.purpose == "run" and r.alloc.attempt in accepted])


def kept_provider(held: list[Run], runs: list[Run], verdict: c.Verdict) -> str:
    """The provider whose result the job kept, not the last one allocated."""
    accepted = set(verdict.accepted_attempts)
    provider = held[0].alloc.provider_id if held else ""
    chosen = [r for r in runs if r.alloc.attempt in accepted and r.purpose == "run"]
    if chosen:
        provider = chosen[0].alloc.provider_id
    return provider


def used_so_far(runs: list[Run], now: datetime) -> list[c.PaymentLine]:
    """On a cancel: the GPU time each run used, finished or still running at `now`."""
    payments = []
    for r in runs:
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
    return payments


def cancel_settlement(
    job_id: str, runs: list[Run], payments: list[c.PaymentLine]
) -> c.SettleRequest:
    """The settlement of a cancelled job that had not asked for one: the time used is paid,
    the rest refunded."""
    if len(payments) <= 1 and len(runs) <= 1:
        only = runs[0].alloc if runs else None
        return c.SettleRequest(
            job_id, only.provider_id if only else "",
            payments[0].gpu_ms if payments else 0,
            only.price_per_gpu_hour_micro if only else 0,
            pay_provider=bool(payments) and payments[0].gpu_ms > 0,
        )
    return c.SettleRequest(job_id, "", 0, 0, False, payments=payments)
