"""Jobs from 5 clients on 4 GPUs drain completely through a network of processes, and in
fair share.

Client ann submits 60 jobs first; then bob, cyd, dee and eve submit 15 each, interleaved.
With the queue's fair share (domain/scheduling.py: the next GPU goes to the waiting client
that holds the fewest), bob..eve are not starved behind ann's backlog: while n clients have
jobs waiting, each gets about 1/n of the GPU allocations, measured from the event log as
tests/support/fairness.py says (here over at least one window of 50 allocations with all
five waiting; tests/activities/test_fair_share.py measures the scheduler itself over 500
jobs and many windows, in seconds). Every job ends SUCCEEDED, settled once, and the ledger
balances.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.network import CREDITS_MICRO
from tests.reliability.harness import Cluster, EventLog, submit_many
from tests.reliability.ledger import (
    assert_each_job_ended_once,
    assert_ledger_balances,
    assert_log_is_whole,
)
from tests.support.fairness import Order, allocation_order, fairness_report

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SPEC = {"name": "tick", "command": ["true"], "max_price_per_gpu_hour": "2", "timeout": "1m"}
FIRST, OTHERS = "ann", ["bob", "cyd", "dee", "eve"]
# Enough for one window of 10n allocations with all five waiting (bob..eve's 60 jobs last
# about 75 allocations while ann still waits); a job here costs ~1 s of the machine.
N_FIRST, N_EACH = 60, 15


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("fair-share")
    cluster = Cluster.create(home, temporal_server)
    try:
        cluster.start_api()
        cluster.start_control_worker()
        cluster.start_provider("fair-a", "2xH100:80", "1.0")
        cluster.start_provider("fair-b", "2xH100:80", "1.0")
        cluster.wait_providers_online(["fair-a", "fair-b"])
        yield cluster
    finally:
        cluster.stop()


def test_jobs_from_5_clients_drain_in_fair_share(cluster: Cluster) -> None:
    net = cluster.net()
    log = EventLog(cluster.settings)
    started = time.monotonic()
    first = submit_many([net], [(FIRST, SPEC)] * N_FIRST)
    others = submit_many([net], [(c, SPEC) for _ in range(N_EACH) for c in OTHERS])
    submitted = time.monotonic() - started
    job_ids = first + others
    clients = {j: net.client_id(FIRST) for j in first}
    clients |= {j: net.client_id(OTHERS[n % len(OTHERS)]) for n, j in enumerate(others)}

    ends = log.wait_ended(job_ids, timeout_s=420)
    drained = time.monotonic() - started
    failed = {j: e for j, e in ends.items() if e != "JobSucceeded"}
    assert not failed, f"{len(failed)} jobs did not succeed: {list(failed.items())[:5]}"

    names = {net.client_id(n): n for n in [FIRST, *OTHERS]}
    order: Order = [(names[c], frozenset(names[w] for w in waiting),
                     frozenset(names[h] for h in held))
                    for c, waiting, held in allocation_order(log, clients)]
    # One allocation per job, and one more for each run lost with its provider (a machine
    # this loaded can miss a heartbeat deadline; the provider then comes back on its own).
    lost = len(log.of_type("ProviderLost"))
    assert len(order) == len(job_ids) + lost, (len(order), len(job_ids), lost)
    problems = fairness_report(order, min_windows=1)
    sequence = "".join(a[0][0] for a in order)
    print(f"\n{len(job_ids)} jobs: submitted in {submitted:.0f} s, drained in {drained:.0f} s "
          f"({len(job_ids) / drained:.1f} jobs/s); allocation order (first letter of the "
          f"client):\n{sequence}")
    assert not problems, "\n".join(problems[:10]) + f"\norder: {sequence}"

    assert_log_is_whole(log)
    assert_each_job_ended_once(log, job_ids)
    assert_ledger_balances(log, job_ids, clients, CREDITS_MICRO)
