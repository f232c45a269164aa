"""kill -9 each process of the network in turn, with 50 jobs in flight: nothing is lost or
done twice.

A Temporal dev server of this test's own, on a SQLite file (it must come back with its
histories), an API, a control worker and three simulated providers (2 GPUs each). 50 jobs
(two seconds of work, one output uploaded through the API) from two clients; while they run,
one at a time: the API (kept down 3 s, while runs finish and upload), the control worker,
a GPU worker (while it runs a job) and the Temporal server are killed with SIGKILL and
started again. Then:

- every job ended SUCCEEDED (the job a killed provider held ran again elsewhere), once:
  one terminal event, one JobSettled, one workflow run, completed;
- no run was lost but the killed provider's: the API's, control worker's and Temporal's
  outages cost no provider its run or its reputation;
- the event log has no gap and no repeated notification id or aggregate version;
- the ledger balances (every transfer posted once each side, all balances sum to zero),
  every escrow is empty, and each client paid its jobs' charges once;
- the read model (rebuilt by a restarted API from where it was) shows every job SUCCEEDED.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from tests.e2e.network import CREDITS_MICRO
from tests.reliability.harness import Cluster, EventLog, TemporalServer, submit_many
from tests.reliability.ledger import (
    assert_each_job_ended_once,
    assert_ledger_balances,
    assert_log_is_whole,
)
from workflows.contracts import job_workflow_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

JOBS = 50
CLIENTS = ("kim", "lee")
SPEC = {
    "name": "work", "command": "sleep 2; echo done > out.txt", "outputs": ["out.txt"],
    "max_price_per_gpu_hour": "2", "timeout": "2m",
}
PROVIDERS = ("kr-a", "kr-b", "kr-c")
API_DOWN_S = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, TemporalServer]]:
    home = tmp_path_factory.mktemp("kill-restart")
    temporal = TemporalServer(home)
    temporal.start()
    cluster = Cluster.create(home, temporal.address)
    try:
        cluster.start_api()
        cluster.start_control_worker()
        for provider_id in PROVIDERS:
            cluster.start_provider(provider_id, "2xH100:80", "1.0")
        cluster.wait_providers_online(list(PROVIDERS))
        yield cluster, temporal
    finally:
        cluster.stop()
        temporal.stop()


def workflow_runs(address: str, job_ids: list[str],
                  timeout_s: float = 60) -> dict[str, list[WorkflowExecutionStatus]]:
    """Every run of each job's workflow, as Temporal's visibility lists them, once none is
    running (a workflow closes a moment after its job's last event)."""

    async def runs() -> dict[str, list[WorkflowExecutionStatus]]:
        client = await Client.connect(address)
        wanted = {job_workflow_id(j): j for j in job_ids}
        deadline = time.monotonic() + timeout_s
        while True:
            found: dict[str, list[WorkflowExecutionStatus]] = {j: [] for j in job_ids}
            async for wf in client.list_workflows("WorkflowType = 'JobWorkflow'"):
                if wf.id in wanted and wf.status is not None:
                    found[wanted[wf.id]].append(wf.status)
            running = [j for j, r in found.items() if WorkflowExecutionStatus.RUNNING in r]
            if not running or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.5)

    return asyncio.run(runs())


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(0.2)


def test_every_process_killed_and_restarted_loses_and_repeats_nothing(
    cluster: tuple[Cluster, TemporalServer],
) -> None:
    net, (stack, temporal) = cluster[0].net(), cluster
    log = EventLog(stack.settings)
    job_ids = submit_many([net], [(CLIENTS[n % 2], SPEC) for n in range(JOBS)])
    clients = {j: net.client_id(CLIENTS[n % 2]) for n, j in enumerate(job_ids)}

    def ended() -> set[str]:
        log.read()
        return {log.job_of(e) for e in log.of_type("JobSucceeded", "JobFailed")}

    def ended_at_least(n: int) -> bool:
        return len(ended()) >= n

    def executing(at_least: int) -> bool:
        """Jobs have run for a moment (their processes have started) and not finished."""
        log.read()
        finished = {(log.job_of(e), e.attempt) for e in log.of_type("ExecutionFinished")}
        now = datetime.now(UTC)
        running = [e for e in log.of_type("ExecutionStarted")
                   if (log.job_of(e), e.attempt) not in finished
                   and (now - e.timestamp).total_seconds() > 0.4]
        return len(running) >= at_least

    def running_a_job(provider_id: str) -> bool:
        """A job's process runs under the provider's agent now, so killing the agent now
        loses that run. (The event log cannot tell: a run that has just ended has no
        ExecutionFinished until its workflow records it.)"""
        return bool(stack.procs[provider_id].children())

    faults = []
    for victim in ("api", "control", PROVIDERS[1], "temporal"):
        if victim in PROVIDERS:
            wait_until(partial(running_a_job, victim), 120, f"a job running on {victim}")
        if victim == "api":  # down while runs finish: their outputs go up through the API
            wait_until(partial(executing, 3), 120, "jobs running")
        done = ended()
        assert len(done) < JOBS, f"every job ended before {victim} was killed: nothing tested"
        began = time.monotonic()
        if victim == "temporal":
            temporal.proc.kill9()
            temporal.start()  # the same port and SQLite file
        elif victim == "api":
            stack.procs[victim].kill9()
            time.sleep(API_DOWN_S)  # a deploy or a crash loop: seconds without an API
            stack.procs[victim].start()
            stack.wait_api(victim)
        else:
            stack.restart(victim)
        wait_until(partial(ended_at_least, min(JOBS, len(done) + 3)), 180,
                   f"jobs ending again after {victim} was killed")
        faults.append(f"{victim} killed with {JOBS - len(done)} jobs in flight; 3 more jobs "
                      f"ended {time.monotonic() - began:.1f} s later")

    started = time.monotonic()
    ends = log.wait_ended(job_ids, timeout_s=300)
    print("\n" + "\n".join(faults) + f"\nall {JOBS} ended {time.monotonic() - started:.0f} s "
          "after the last fault")
    # What must hold however each job ended: once, one run, a whole log, a balanced ledger.
    assert_each_job_ended_once(log, job_ids)
    runs = workflow_runs(temporal.address, job_ids)
    odd = {j: r for j, r in runs.items() if r != [WorkflowExecutionStatus.COMPLETED]}
    assert not odd, f"jobs without exactly one completed workflow run: {list(odd.items())[:5]}"
    assert_log_is_whole(log)
    assert_ledger_balances(log, job_ids, clients, CREDITS_MICRO)

    # And each job succeeded: a restart loses nothing.
    failed = {j: e for j, e in ends.items() if e != "JobSucceeded"}
    reasons = {log.job_of(e): e.reason for e in log.of_type("JobFailed")}
    assert not failed, f"{len(failed)} jobs did not succeed: " + "; ".join(
        f"{j}: {reasons.get(j, e)}" for j, e in list(failed.items())[:5])

    states: Counter[str] = Counter()
    for client in CLIENTS:
        jobs = net.gql("query { jobs(limit: 500) { id state } }", client)["jobs"]
        states.update(j["state"] for j in jobs if j["id"] in clients)
    assert states == {"SUCCEEDED": JOBS}, states
    lost = Counter(e.provider_id for e in log.of_type("ProviderLost"))
    print(f"runs lost with their provider and run again elsewhere: {dict(lost)}")
    # The network's own outages (its API, control worker, Temporal) lose no run and blame
    # no provider: only the runs of the provider that was killed were lost.
    assert set(lost) <= {PROVIDERS[1]}, dict(lost)
    assert lost[PROVIDERS[1]] >= 1, "the provider was killed but no run of it was lost"
