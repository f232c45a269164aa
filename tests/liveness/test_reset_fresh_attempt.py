"""A reset whose new run cannot take its attempt over runs a fresh attempt (a real network).

An operator resets a running job's workflow while the control worker is down. The new run
comes back to an attempt it cannot take over: the step its old run handed out was stopped
on its provider once the API's adopt grace ran out (GPGPU_GPU_ADOPT_GRACE_S), or the
attempt ran and the board no longer keeps its results (a day later: KEEP_FINISHED_S). It
runs neither again in that attempt's work directory nor under its output keys, and does not
fail the job: it leaves the attempt (RunUnplaced, its GPUs back, its provider not blamed,
nobody paid for it) and runs a fresh one, which the job is settled on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from temporalio.client import Client

from domain.ledger import escrow_account, provider_account
from readmodel.schema import ViewDB
from tests.e2e.network import Network, network
from tests.liveness.flow_support import PATIENT, finish, held_gpus, ledger, submit
from tests.liveness.test_reset_safe import entries_of, reset, reset_points
from workflows.contracts import EXECUTE_JOB, JobResult, job_workflow_id

pytestmark = pytest.mark.e2e

FLEET: list[tuple[str, str, str, list[str]]] = [("r-1", "1xH100:80", "1.0", [])]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    # The agent heartbeats every 3 s (a third of the timeout): the API tells the old run's
    # process to stop within seconds of the reset, well before its command would be done.
    env = {**PATIENT, "GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S": "9",
           "GPGPU_GPU_ADOPT_GRACE_S": "1"}
    with network(tmp_path_factory.mktemp("fresh"), temporal_server, FLEET, env) as n:
        yield n


def rows(net: Network, workflow_id: str, kind: str) -> list[dict[str, Any]]:
    views = ViewDB(net.stack.settings)
    try:
        return views.query("SELECT run_id, handed_out_at, outcome FROM assignments"
                           " WHERE workflow_id = ? AND kind = ?", (workflow_id, kind))
    finally:
        views.close()


def wait_for(what: str, done: Callable[[], bool], timeout_s: float = 60,
             seen: Callable[[], object] = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, (what, seen())
        time.sleep(0.05)


def stop_control_worker(net: Network) -> None:
    child = next(c for c in net.stack.children if c.name == "control-worker")
    os.killpg(child.proc.pid, signal.SIGKILL)
    child.proc.wait()


def start_control_worker(net: Network) -> None:
    child = next(c for c in net.stack.children if c.name == "control-worker")
    child.proc = child.launch()


async def reset_while_down(net: Network, temporal_server: str, workflow_id: str) -> str:
    """Reset the job's run to the task after its allocation (the control worker is down)."""
    client = await Client.connect(temporal_server,
                                  data_converter=net.stack.settings.temporal_converter())
    original = (await client.get_workflow_handle(workflow_id).describe()).run_id
    points = await reset_points(client, workflow_id, original)
    return await reset(client, workflow_id, original, points["after allocation"])


async def result_of(net: Network, temporal_server: str, workflow_id: str,
                    run_id: str) -> JobResult:
    client = await Client.connect(temporal_server,
                                  data_converter=net.stack.settings.temporal_converter())
    handle = client.get_workflow_handle(workflow_id, run_id=run_id, result_type=JobResult)
    return await asyncio.wait_for(handle.result(), 120)


def assert_settled_on_a_fresh_attempt(net: Network, client: str, job_id: str,
                                      result: JobResult) -> None:
    """SUCCEEDED on attempt 2's outputs; attempt 1 left (RunUnplaced), not blamed, unpaid."""
    assert result.state == "SUCCEEDED", result
    record = finish(net, client, job_id, timeout_s=60)
    assert record["state"] == "SUCCEEDED", record
    books = ledger(net)
    job = books.job(job_id)
    events = Counter(type(e).__name__ for e in books.repository.event_store.get(job.id))
    assert events["RunUnplaced"] == 1 and "Unplaced:1" in job.recorded, events
    assert events["ProviderLost"] == events["RunFailed"] == 0, events
    assert "GpusAllocated:2" in job.recorded, job.recorded
    assert job.settlement is not None and result.charged_micro == job.settlement["charged_micro"]
    assert events["FundsEscrowed"] == events["JobSettled"] == 1, events
    assert books.balance(escrow_account(job_id)) == 0
    # The provider is paid once, for the fresh attempt; nothing of attempt 1 is judged.
    paid_to = entries_of(books, provider_account("r-1"), job_id)
    assert all(len(a) == 1 for a in paid_to.values()), paid_to
    assert sum(sum(a) for a in paid_to.values()) == job.settlement["provider_paid_micro"]
    assert [k for k in books.provider("r-1").outcome_jobs if k.startswith(job_id)] == [job_id]
    assert held_gpus(net, ["r-1"]) == {}


async def test_a_reset_taken_up_after_the_adopt_grace_runs_a_fresh_attempt(
    net: Network, temporal_server: str
) -> None:
    """The control worker is down when the job is reset, for longer than the adopt grace:
    the API tells the old run's process to stop. Once the worker is back, the new run does
    not hand attempt 1 to the provider again (into the same work directory, where the
    stopped run left its files): it runs attempt 2, which the job succeeds on."""
    # Each start of the command in a work directory leaves a line there; out.txt is it.
    job_id = submit(net, "eve", command="echo started >> runs.txt; sleep 20; cp runs.txt out.txt")
    workflow_id = job_workflow_id(job_id)
    wait_for("the command was not handed out", lambda: any(
        r["handed_out_at"] is not None for r in rows(net, workflow_id, EXECUTE_JOB)))
    stop_control_worker(net)
    try:
        run_id = await reset_while_down(net, temporal_server, workflow_id)
        # Past the grace, the agent's next heartbeat is answered "stop".
        wait_for("the old run's command was not stopped", lambda: [
            r["outcome"] for r in rows(net, workflow_id, EXECUTE_JOB)] == ["gone"], 30,
            lambda: rows(net, workflow_id, EXECUTE_JOB))
    finally:
        start_control_worker(net)
    result = await result_of(net, temporal_server, workflow_id, run_id)
    assert_settled_on_a_fresh_attempt(net, "eve", job_id, result)
    job = ledger(net).job(job_id)
    (entry,) = [m for entries in job.manifests.values() for m in entries]
    assert entry["key"].endswith("/runs/2/out.txt"), entry
    assert net.get("eve", entry["key"]) == b"started\n"  # a work directory of its own


async def test_a_reset_to_a_spent_attempt_whose_results_are_gone_runs_a_fresh_attempt(
    net: Network, temporal_server: str
) -> None:
    """Attempt 1's command ran; the job is reset to before it once the board no longer
    keeps its results (a day later, KEEP_FINISHED_S). The attempt is not run again, and the
    job does not fail (AttemptSpent ended its workflow before): attempt 2 runs."""
    job_id = submit(net, "fay", command="head -c 100000000 /dev/urandom > out.txt")
    workflow_id = job_workflow_id(job_id)
    wait_for("the command did not finish",
             lambda: "execution_finished:1" in ledger(net).job(job_id).recorded)
    stop_control_worker(net)
    try:
        run_id = await reset_while_down(net, temporal_server, workflow_id)
        views = ViewDB(net.stack.settings)
        try:  # a day later: forget_finished dropped the finished steps' rows and results
            with views.transaction() as cur:
                cur.execute("DELETE FROM assignments WHERE workflow_id = ?"
                            " AND finished_at IS NOT NULL", (workflow_id,))
        finally:
            views.close()
    finally:
        start_control_worker(net)
    result = await result_of(net, temporal_server, workflow_id, run_id)
    assert_settled_on_a_fresh_attempt(net, "fay", job_id, result)
    books = ledger(net)
    job = books.job(job_id)
    accepted = [e for e in books.repository.event_store.get(job.id)
                if type(e).__name__ == "ResultAccepted"]
    assert [getattr(e, "attempt", None) for e in accepted] == [2], accepted
