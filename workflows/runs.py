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
    if label == "rerun":  # the provider it lost may take it again: not "independent"
        return f"the run, once its provider was lost, found no provider within {bound_s:g} s"
    what = {"check": "the network's check", "replica": "a replica",
            "tie-break": "the tie-break", "verifier": "the verifier",
            "retry": "the run, once a provider failed it,"}.get(label, "a run")
    return f"{what} found no independent provider within {bound_s:g} s"


def lost_once(lost: list[str]) -> list[str]:
    """The providers lost once while running this job (`lost`: one entry per loss).

    The job's own run may go back to one of them, as a last resort: only when no other
    provider can take the run (the scheduler tries the others first), and only once it is
    back online (a provider marked lost is placed again only after it heartbeats anew). A
    user whose job needs a model only one provider has would rather it ran there after a
    brief crash than failed; a provider lost twice for the same job is out of it for good.
    The loss is penalised either way (`lost` in its reputation). A replica, the network's
    check, a tie-break or the verifier never go back to a provider the job lost."""
    return [p for p in unique(lost) if lost.count(p) == 1]


def setbacks(failures: list[tuple[int, str, str]], losses: list[tuple[int, str, str]]) -> str:
    """What happened to a run's earlier tries, for the reason the job fails with: the last
    failure, and the provider(s) lost ((attempt, provider, why) each)."""
    notes = [failures[-1][2]] if failures else []
    if len(losses) == 1:
        notes.append(losses[0][2])
    elif losses:
        notes.append(f"{len(losses)} runs lost their provider "
                     f"({', '.join(p for _, p, _ in losses)}); the last: {losses[-1][2]}")
    return "; ".join(notes)


def unproven_timeout(run: Run, runs: list[Run]) -> bool:
    """A run that timed out, and that no other run of the job checked: the window it would
    be paid for is one its provider chose (heartbeating without running, then reporting a
    timeout), and nothing shows work was done: not even an output, which a provider that
    skipped the work can make up as well as write (a timed-out job fails whatever it left,
    so nothing compares it). The client pays for it all the same (its job was given the
    GPUs; so a client gains nothing from a job that never ends), the provider is not paid,
    and it is recorded as a `timeout`. Checking every timeout instead would cost the
    network a whole timeout of GPU time each."""
    ran = [r for r in runs if r.purpose == "run"]
    return (len(ran) == 1 and ran[0] is run and run.executed is not None
            and run.executed.timed_out)


def unproven_ending(run: Run) -> bool:
    """A run of the job's command whose provider alone says it came to nothing: its command
    exited non-zero ("failed"), or exited 0 but left a declared output missing
    ("empty-handed"); not a timeout (`unproven_timeout`).

    Storage is the witness of what is missing (activities/verify.py refuses a report that
    calls missing an output the run's grant wrote), but not of whether the command ran, nor
    of how it exited: a provider that skipped the work and reported a failure or an empty
    hand, and an honest one whose client's job fails or writes nothing, report the same. So
    such a run is checked by an independent run (JobWorkflow forces the network's check)
    and is paid and rewarded only if that run reproduces it (`unreproduced`)."""
    if run.purpose != "run" or run.executed is None or run.executed.timed_out:
        return False
    if run.executed.exit_code != 0:
        return True
    return run.uploaded is not None and bool(run.uploaded.missing)


def undecidable(runs: list[Run], verdict: c.Verdict) -> bool:
    """Several runs and no majority: the job, not a provider, is what cannot be trusted."""
    return verdict.decided and not verdict.accepted and sum(
        r.purpose == "run" for r in runs) > 1


def unreproduced(run: Run, runs: list[Run], verdict: c.Verdict) -> bool:
    """A run with an unproven ending that no other run agreed with: nothing shows it was run
    (its check could not be placed, or nothing decided). Charged to the client like a
    timeout that nothing checked, not paid to its provider, and no outcome is recorded:
    neither the provider (who may have skipped the work) nor the client (whose job may fail
    or write nothing) gains, and neither can lower the other's standing."""
    accepted = set(verdict.accepted_attempts)
    return unproven_ending(run) and not (
        run.alloc.attempt in accepted and len(accepted - {run.alloc.attempt}) > 0)


def outcome_key(job_id: str, run: Run, runs: list[Run]) -> str:
    """Reputation records one outcome per provider and job (per run when there are several)."""
    return job_id if len(runs) == 1 else f"{job_id}#{run.alloc.attempt}"


def unproven_attempts(runs: list[Run], verdict: c.Verdict) -> set[int]:
    return {r.alloc.attempt for r in runs
            if unproven_timeout(r, runs) or unreproduced(r, runs, verdict)}


def kept_attempt(runs: list[Run], verdict: c.Verdict) -> int | None:
    """The run whose result the job keeps (the first accepted run of the job's command)."""
    accepted = set(verdict.accepted_attempts)
    return next((r.alloc.attempt for r in runs
                 if r.alloc.attempt in accepted and r.purpose == "run"), None)


def settlement(job_id: str, runs: list[Run], verdict: c.Verdict) -> c.SettleRequest:
    """Paid: every run whose result was accepted, and the verifier's run; with no majority
    (`undecidable`), every run not caught by storage. An unproven run (a timeout, or a
    failed or empty-handed run nothing reproduced) is charged all the same, but its
    provider is not paid. The client pays for the run whose result it keeps, even where
    that is the network's check (its own run was outvoted): a client never gets a result
    for free."""
    accepted = set(verdict.accepted_attempts)
    mismatched = set(verdict.mismatched_attempts)
    unproven = unproven_attempts(runs, verdict)
    open_verdict = undecidable(runs, verdict)
    kept = kept_attempt(runs, verdict)
    clients_kept = any(r.payer == "client" and r.purpose == "run" and r.alloc.attempt in accepted
                       for r in runs)
    lines = []
    for r in runs:
        if r.executed is None or r.alloc.attempt in mismatched:
            continue
        if not (r.alloc.attempt in accepted or r.purpose == "verify" or open_verdict):
            continue
        payer = r.payer
        if r.alloc.attempt == kept and not clients_kept:
            payer = "client"
        lines.append(c.PaymentLine(r.alloc.provider_id, r.executed.gpu_ms,
                                   r.alloc.price_per_gpu_hour_micro, payer,
                                   withheld=r.alloc.attempt in unproven))
    return c.SettleRequest(job_id, "", 0, 0, False, payments=lines)


def outvoted(runs: list[Run], verdict: c.Verdict) -> list[Run]:
    """The runs a majority rejected whose report storage does not contradict.

    Not paid, and recorded as `outvoted`, which puts the provider back on probation (its
    next results are all checked, domain/verification.py `check_rate`) but is not in its
    reputation score until the jobs of several distinct clients, each having paid for
    verified work (more for each run its jobs outvoted before), outvoted it within a
    window (domain/reputation.py `counted_outvoted`):
    the runs compared are of the client's command, which can see when and where it runs
    (the clock, its GPUs, how much of its client's storage quota is left) and so write one
    answer on the run it targets and another on the network's check and tie-break
    (tests/adversarial/test_framing.py). One client's majority therefore says which result
    the job keeps, never that a provider cheated; that takes evidence the client cannot
    shape: storage contradicting the provider's report, a known-answer canary (one follows
    each outvoted provider), or, weighing as a failure, the majorities of several clients."""
    rejected = set(verdict.mismatched_attempts) - set(verdict.contradicted_attempts)
    return [r for r in runs if r.executed is not None and r.alloc.attempt in rejected]


def outcomes(job_id: str, runs: list[Run], verdict: c.Verdict) -> list[c.ReputationRequest]:
    """The reputation outcome of each run that executed, in the order of `runs`: none for an
    unreproduced failed or empty-handed run, nor for the runs of a job with no majority. A
    `mismatch` is recorded only where storage contradicts the run's report; an outvoted run
    gets `outvoted` (back on probation, its score unchanged unless several clients outvoted
    it: `outvoted` above)."""
    accepted = set(verdict.accepted_attempts)
    contradicted = set(verdict.contradicted_attempts)
    rejected = set(verdict.mismatched_attempts)
    out = []
    for r in runs:
        if r.executed is None:
            continue
        if r.alloc.attempt in contradicted:
            outcome = "mismatch"  # its report contradicts storage
        elif r.alloc.attempt in rejected:
            outcome = "outvoted"  # not paid, checked again, scored only across clients
        elif unreproduced(r, runs, verdict):
            continue
        elif unproven_timeout(r, runs):
            outcome = "timeout"
        elif len(runs) == 1:  # judged alone, rejected only where storage contradicts it
            outcome = "success" if verdict.accepted else "mismatch"
        elif r.alloc.attempt in accepted or r.purpose == "verify":
            outcome = "success"
        else:
            continue  # no majority: neither blamed nor rewarded
        out.append(c.ReputationRequest(outcome_key(job_id, r, runs), r.alloc.provider_id,
                                       outcome))
    return out


def trusted(runs: list[Run], verdict: c.Verdict) -> list[str]:
    """The providers whose run of the job was accepted (a canary may follow each)."""
    accepted = set(verdict.accepted_attempts)
    return unique([r.alloc.provider_id for r in runs if r.executed is not None
                   and r.purpose == "run" and r.alloc.attempt in accepted
                   and not unreproduced(r, runs, verdict)])


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
