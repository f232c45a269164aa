"""What `python -m bench soak` checks once the jobs have ended: each job's ending, its
runs, the GPUs, the ledger and the read model; each figure a JSON line on stdout."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from bench._common import emit_line, say
from bench.soak_plan import Planned

if TYPE_CHECKING:
    from bench.soak import Soak
from tests.reliability.harness import (
    TERMINAL,
    EventLog,
    event_type,
    per_job,
)
from tests.reliability.ledger import balances, open_escrows, replay_reservations

API_STATES = {"JobSucceeded": "SUCCEEDED", "JobFailed": "FAILED", "JobCancelled": "CANCELLED",
              "JobRejected": "REJECTED"}
GPUS = "{ providers { providerId gpus { index busyJobId } } }"


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    emit_line("soak", metric, value, unit, labels)


def wait_terminal(log: EventLog, job_ids: set[str], deadline: float) -> dict[str, Any]:
    """Each job's terminal event, waiting until every job has one or the deadline."""
    ended: dict[str, Any] = {}
    last = 0.0
    while True:
        log.read()
        for e in log.of_type(*TERMINAL):
            ended.setdefault(log.job_of(e), e)
        missing = job_ids - set(ended)
        if not missing or time.monotonic() > deadline:
            return ended
        if time.monotonic() - last > 15:
            say(f"  {len(job_ids) - len(missing)} of {len(job_ids)} jobs ended")
            last = time.monotonic()
        time.sleep(0.5)


def overruns(log: EventLog, ended: dict[str, Any], submitted: dict[str, Planned],
             timeout_of: Callable[[Planned], int]) -> dict[str, float]:
    """Seconds past its bound each job took: from its first allocation (its submit if never
    placed) to its terminal event (to now, if it has none), less its timeout times the runs
    it pays for."""
    start: dict[str, datetime] = {}
    for e in log.of_type("GpusAllocated"):
        start.setdefault(log.job_of(e), e.timestamp)
    for e in log.jobs_submitted():
        start.setdefault(log.job_of(e), e.timestamp)
    now = datetime.now(UTC)
    return {
        job_id: ((ended[job_id].timestamp if job_id in ended else now) - start[job_id])
        .total_seconds() - timeout_of(p) * p.runs
        for job_id, p in submitted.items() if job_id in start
    }


def gpus_held_by_api(soak: Soak, ended: set[str]) -> list[str]:
    """GPUs the API shows (each provider to its owner) as held by a job that has ended."""
    held = []
    for owner in sorted(set(soak.cluster.owners.values())):
        providers = soak.call("providers", partial(soak.net.gql, GPUS, owner))["providers"]
        held += [f"{p['providerId']} GPU {g['index']} held by {g['busyJobId']}"
                 for p in providers if soak.cluster.owners.get(p["providerId"]) == owner
                 for g in p["gpus"] if g["busyJobId"] and g["busyJobId"] in ended]
    return held


def audit(soak: Soak, log: EventLog, ended: dict[str, Any], grace_s: float) -> list[str]:
    failures: list[str] = []
    jobs = set(soak.submitted)
    ours = {log.job_of(e) for e in log.jobs_submitted()}  # all, even a retried submit's twin
    emit("jobs", len(jobs), "jobs", planned=len(soak.planned),
         kinds=dict(Counter(p.kind for p in soak.submitted.values())),
         cancelled_at=dict(soak.cancelled_at), submit_errors=len(soak.submit_errors))
    failures += [f"submit failed: {e}" for e in soak.submit_errors]
    states = Counter(API_STATES[event_type(e)] for j, e in ended.items() if j in jobs)
    emit("jobs_terminal", sum(states.values()), "jobs", states=dict(states))
    missing = sorted(jobs - set(ended))
    last = {log.job_of(e): event_type(e) for e in log.events if e.originator_id in log.jobs}
    stuck = Counter(f"{soak.state(j, soak.submitted[j].client)} after {last.get(j)} "
                    f"({soak.submitted[j].kind})" for j in missing)
    emit("jobs_not_terminal", len(missing), "jobs", stuck=dict(stuck.most_common()),
         sample=missing[:3])
    if missing:
        failures.append(f"{len(missing)} jobs reached no terminal state within the deadline, "
                        f"e.g. {missing[:3]}")
    twice = {j: dict(c) for j, c in per_job(log, TERMINAL).items() if sum(c.values()) > 1}
    if twice:
        failures.append(f"{len(twice)} jobs ended more than once: {list(twice.items())[:3]}")

    from protocol.fields import parse_duration

    over = overruns(log, ended, soak.submitted, lambda p: parse_duration(p.spec["timeout"]))
    worst = max(over, key=lambda j: over[j], default=None)
    emit("max_overrun_s", round(max(over.values(), default=0.0), 3), "s", job=worst,
         kind=soak.submitted[worst].kind if worst else None, ended=worst in ended,
         grace_s=grace_s)
    late = {j: round(s, 1) for j, s in over.items() if s > grace_s}
    if late:
        failures.append(f"{len(late)} jobs ran more than {grace_s:.0f} s past their bound "
                        f"(timeout x runs from their first allocation): "
                        f"{sorted(late.items(), key=lambda x: -x[1])[:3]}")

    mismatched = []
    for job_id in sorted(jobs & set(ended)):
        client = soak.submitted[job_id].client
        state = soak.state(job_id, client)
        if state != API_STATES[event_type(ended[job_id])]:
            mismatched.append(f"{job_id}: API {state}, events "
                              f"{event_type(ended[job_id])}")
    emit("read_model_mismatches", len(mismatched), "jobs", sample=mismatched[:3])
    if mismatched:
        failures.append(f"{len(mismatched)} jobs' API state differs from their events: "
                        f"{mismatched[:3]}")

    # Replicas, checks and verifiers: each run of a job on a provider of another owner.
    runs: dict[str, dict[int, str]] = {}
    for e in log.of_type("GpusAllocated"):
        runs.setdefault(log.job_of(e), {})[e.attempt] = e.provider_id
    for e in log.of_type("ProviderLost", "CheckSkipped", "RunUnplaced"):
        runs.get(log.job_of(e), {}).pop(e.attempt, None)
    owners = soak.cluster.owners
    several = {j: r for j, r in runs.items() if j in jobs and len(r) > 1}
    shared = [f"{j}: {sorted(r.values())}" for j, r in several.items()
              if len({owners.get(p, p) for p in r.values()}) < len(r)]
    emit("jobs_run_more_than_once", len(several), "jobs", shared_owner=len(shared),
         sample=shared[:3], unplaced=Counter(event_type(e) for e in log.of_type(
             "CheckSkipped", "RunUnplaced") if log.job_of(e) in jobs))
    if shared:
        failures.append(f"{len(shared)} jobs ran twice on one owner's providers: {shared[:3]}")

    # GPUs: a job's release may follow its terminal event by a moment.
    deadline = time.monotonic() + 30
    while True:
        log.read()
        held_now = replay_reservations(log)[1]
        leaked = [f"{p} GPU {i} reserved for {j}, which ended {event_type(ended[j])}"
                  for (p, i), j in held_now.items() if j in ended]
        shown = gpus_held_by_api(soak, set(ended))
        if not (leaked or shown) or time.monotonic() > deadline:
            break
        time.sleep(1)
    emit("gpus_reserved", len(leaked), "gpus", by_api=len(shown), sample=(leaked + shown)[:3],
         held_by_unended_jobs=len(held_now) - len(leaked))
    if leaked or shown:
        failures.append(f"GPUs still reserved after their jobs ended: {(leaked + shown)[:3]}")

    held, by_transfer = balances(log)
    total = sum(held.values())
    lopsided = {t: a for t, a in by_transfer.items() if len(a) != 2 or sum(a) != 0}
    emit("ledger_sum_micro", total, "micro-credits", accounts=len(held))
    emit("lopsided_transfers", len(lopsided), "transfers", sample=list(lopsided)[:3])
    if total != 0:
        failures.append(f"the ledger sums to {total} micro-credits, not 0")
    if lopsided:
        failures.append(f"transfers not posted once on each side: {list(lopsided.items())[:3]}")
    escrows = open_escrows(log, ours & set(ended))
    emit("open_escrows", len(escrows), "escrows", sample=escrows[:3])
    if escrows:
        failures.append(f"{len(escrows)} ended jobs left their escrow open: {escrows[:3]}")
    return failures

