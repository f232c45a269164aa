"""500 jobs from 5 clients on 4 GPUs, through the control worker's scheduler: fair share.

Client ann queues 300 jobs first; then bob, cyd, dee and eve queue 50 each, interleaved.
Each job is a thread that asks the scheduler for a GPU (activities/scheduler.py, as the
allocate activity does), holds it a moment and gives it back; the scheduler runs its own
rounds meanwhile, on the real domain (in-memory store). The allocation order is read back
from the event log and measured as tests/support/fairness.py says: while n clients wait,
each gets about 1/n of the GPUs. The same order through a network of processes (fewer
jobs, real workflows, agents and sandboxes): tests/reliability/test_fair_share_load.py.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from activities.scheduler import Scheduler
from domain.application import Network
from domain.matching import Decision
from tests.domain.support import PRICE, gpu, make_spec
from tests.support.fairness import allocation_order, fairness_report

FIRST, OTHERS = "ann", ["bob", "cyd", "dee", "eve"]
N_FIRST, N_EACH = 300, 50
PROVIDERS = ("fair-a", "fair-b")  # 2 GPUs each
RUN_S = 0.005  # how long each job holds its GPU
WAIT_S = 120.0  # the longest any job may wait for its GPU (all 500 drain in seconds)


@dataclass
class Log:
    events: list[Any] = field(default_factory=list)
    jobs: dict[Any, str] = field(default_factory=dict)


def read_log(app: Network) -> Log:
    log, position = Log(), 0
    while batch := app.recorder.select_notifications(start=position, limit=2000,
                                                     inclusive_of_start=False):
        for n in batch:
            event: Any = app.mapper.to_domain_event(n)
            if type(event).__qualname__.endswith("JobSubmitted"):
                log.jobs[event.originator_id] = event.job_id
            log.events.append(event)
        position = batch[-1].id
    return log


def test_500_jobs_from_5_clients_get_the_gpus_in_fair_share() -> None:
    app = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    for client in [FIRST, *OTHERS]:
        app.open_client(client, 10**12)
    for provider_id in PROVIDERS:
        app.register_provider(provider_id, "eu", PRICE, [gpu(0), gpu(1)])
    jobs = [(f"{FIRST}-{n:03d}", FIRST) for n in range(N_FIRST)]
    jobs += [(f"{c}-{n:03d}", c) for n in range(N_EACH) for c in OTHERS]
    scheduler = Scheduler(app, lambda: set(PROVIDERS), 0.01)

    def run(job_id: str) -> Decision:
        got = scheduler.request(job_id, 1, set(), wait_s=WAIT_S)
        assert isinstance(got, Decision), f"{job_id}: {got}"
        assert got.provider_id is not None
        time.sleep(RUN_S)
        app.release_gpus(job_id, got.provider_id)
        scheduler.wake()
        return got

    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            running = []
            for job_id, client in jobs:  # queued one by one while the scheduler places
                app.submit_job(job_id, client, make_spec(timeout=60))
                assert app.admit_job(job_id).admitted
                running.append(pool.submit(run, job_id))
            decisions = [r.result(timeout=WAIT_S) for r in running]
    finally:
        scheduler.stop()
    assert all(d.provider_id in PROVIDERS for d in decisions)

    order = allocation_order(read_log(app), dict(jobs))
    assert len(order) == len(jobs)  # one allocation each
    sequence = "".join(a[0][0] for a in order)
    problems = fairness_report(order)
    assert not problems, "\n".join(problems[:10]) + f"\norder: {sequence}"


def test_the_fairness_measure_sees_starvation() -> None:
    """The measure itself: first-come-first-served order with five waiting fails it."""
    everyone = frozenset("abcde")
    fifo = [("a", everyone)] * 100 + [(c, everyone) for c in "bcde" for _ in range(25)]
    assert fairness_report(fifo)
    # A client that takes every other GPU while five wait: half, not a fifth.
    others = itertools.cycle("bcde")
    greedy = [("a" if i % 2 == 0 else next(others), everyone) for i in range(300)]
    assert any("a got" in p for p in fairness_report(greedy))
    # One that gets a GPU only now and then is starved, even if it gets some.
    sparse = [("e" if i % 30 == 0 else next(itertools.cycle("abcd")), everyone)
              for i in range(300)]
    assert any("e waited" in p or "e got" in p for p in fairness_report(sparse))
    fair = [(c, everyone) for _ in range(60) for c in "abcde"]
    assert not fairness_report(fair)
    # A client whose job holds a GPU a long while is served meanwhile: no drought.
    holds = [("e" if i % 30 == 0 else next(itertools.cycle("abcd")), everyone,
              frozenset("e") if i % 30 > 5 else frozenset()) for i in range(300)]
    assert not any("e waited" in p for p in fairness_report(holds))
