"""Reset-safe workflows, on a real network (issue 13 item 3).

An operator resets a finished job's workflow (as `temporal workflow reset` does) to its
first workflow task, to the task right after its allocation, and to its last task. Each
new run ends with the job's recorded outcome, and nothing changes: not one event of the
job, not one ledger entry, not a byte of its stored outputs, not a provider's reputation.
A job reset while its command runs ends once, is paid once and holds nothing after: the new
run takes the first run's execution over on its provider, so the command runs once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowFailureError

from domain.ledger import CHECKS, FEES, client_account, escrow_account, provider_account
from protocol import digest
from readmodel.schema import ViewDB
from tests.e2e.network import Network, network
from tests.liveness.flow_support import PATIENT, finish, held_gpus, ledger, submit
from tests.reliability.harness import TERMINAL as TERMINAL_EVENTS
from workflows.contracts import ALLOCATE_GPUS, EXECUTE_JOB, JobResult, job_workflow_id

pytestmark = pytest.mark.e2e

FLEET = [("r-1", "1xH100:80", "1.0", [])]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("reset"), temporal_server, FLEET, PATIENT) as n:
        yield n


def figures(net: Network, client: str, job_id: str) -> dict[str, Any]:
    """Every figure a reset must not change: the job's events, balances, outputs, reputation."""
    books = ledger(net)
    job = books.job(job_id)
    events = [type(e).__name__ for e in books.repository.event_store.get(job.id)]
    stored = {}
    for entries in job.manifests.values():
        for m in entries:
            stored[m["key"]] = hashlib.sha256(net.get(client, m["key"])).hexdigest()
    names = [client_account(net.client_id(client)), provider_account("r-1"), FEES, CHECKS,
             escrow_account(job_id)]
    return {
        "version": job.version,
        "events": events,
        "state": job.state,
        "settlement": job.settlement,
        "balances": {n: books.balance(n) for n in names},
        "outputs": stored,
        "outcomes": list(books.provider("r-1").outcomes),
        "reservations": dict(books.provider("r-1").reservations),
    }


async def reset_points(client: Client, workflow_id: str, run_id: str) -> dict[str, int]:
    """WorkflowTaskCompleted event ids: the first, the one after allocation, the last."""
    completed, after_allocation, allocated = [], 0, False
    scheduled: dict[int, str] = {}
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = (
                event.activity_task_scheduled_event_attributes.activity_type.name
            )
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sid = event.activity_task_completed_event_attributes.scheduled_event_id
            allocated = allocated or scheduled.get(sid) == ALLOCATE_GPUS
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            completed.append(event.event_id)
            if allocated and not after_allocation:
                after_allocation = event.event_id
    assert completed and after_allocation
    return {"first": completed[0], "after allocation": after_allocation,
            "last": completed[-1]}


async def reset(client: Client, workflow_id: str, run_id: str, event_id: int) -> str:
    """Reset the job's original run (its history has the points) to after event_id."""
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
            reason="liveness test", workflow_task_finish_event_id=event_id,
            request_id=str(uuid.uuid4()),
        )
    )
    return str(response.run_id)


@pytest.mark.parametrize("ending", ["SUCCEEDED", "FAILED"])
async def test_resetting_a_finished_job_changes_nothing(
    net: Network, temporal_server: str, ending: str
) -> None:
    command = "echo 3.14159 > out.txt" + ("" if ending == "SUCCEEDED" else "; exit 3")
    job_id = submit(net, "ann", command=command)
    record = finish(net, "ann", job_id)
    assert record["state"] == ending
    before = figures(net, "ann", job_id)
    client = await Client.connect(temporal_server,
                                  data_converter=net.stack.settings.temporal_converter())
    workflow_id = job_workflow_id(job_id)
    original = (await client.get_workflow_handle(workflow_id).describe()).run_id
    points = await reset_points(client, workflow_id, original)
    for name, event_id in points.items():
        run_id = await reset(client, workflow_id, original, event_id)
        try:
            result = await client.get_workflow_handle(
                workflow_id, run_id=run_id, result_type=JobResult
            ).result()
        except WorkflowFailureError as err:
            cause = err.cause.cause if err.cause and err.cause.cause else err.cause
            raise AssertionError(f"reset to the {name} task: the run failed: {cause}") from err
        assert result.state == ending, (name, result)
        assert result.charged_micro == (before["settlement"] or {}).get("charged_micro"), name
        assert figures(net, "ann", job_id) == before, f"reset to the {name} task changed it"


@pytest.mark.parametrize("point", ["first", "after allocation"])
async def test_resetting_a_running_job_ends_it_once_paid_once(
    net: Network, temporal_server: str, point: str
) -> None:
    """An operator resets a job's workflow while its command runs. The job still ends once,
    is settled once (one escrow, one charge, each payment posted once), and leaves nothing
    held: its escrow is empty and its provider's GPU free."""
    # Each start of the command leaves a line in its work directory; out.txt is that file.
    job_id = submit(net, "cat", command="echo started >> runs.txt; sleep 4; cp runs.txt out.txt")
    net.wait_job(job_id, ("RUNNING",), client="cat", timeout_s=60)
    client = await Client.connect(temporal_server,
                                  data_converter=net.stack.settings.temporal_converter())
    workflow_id = job_workflow_id(job_id)
    original = (await client.get_workflow_handle(workflow_id).describe()).run_id
    points = await reset_points(client, workflow_id, original)
    run_id = await reset(client, workflow_id, original, points[point])
    try:
        result = await client.get_workflow_handle(
            workflow_id, run_id=run_id, result_type=JobResult
        ).result()
    except WorkflowFailureError as err:
        cause = err.cause.cause if err.cause and err.cause.cause else err.cause
        raise AssertionError(f"reset to the {point} task: the run failed: {cause}") from err
    record = finish(net, "cat", job_id, timeout_s=60)
    assert record["state"] == result.state, (record, result)

    books = ledger(net)
    job = books.job(job_id)
    events = Counter(type(e).__name__ for e in books.repository.event_store.get(job.id))
    ends = {t: n for t, n in events.items() if t in TERMINAL_EVENTS}
    assert sum(ends.values()) == 1, events
    assert events["FundsEscrowed"] == events["JobSettled"] == 1, events
    assert events["ExecutionFinished"] <= 1, events
    assert job.settlement is not None
    assert result.charged_micro == job.settlement["charged_micro"]
    assert int(record["costMicro"]) == job.settlement["charged_micro"]
    assert books.balance(escrow_account(job_id)) == 0
    # Each transfer posted once: the client paid its charge, the provider its pay, no more.
    paid_by = entries_of(books, client_account(net.client_id("cat")), job_id)
    assert sorted(paid_by) == (["escrow", "refund"] if job.settlement["refunded_micro"]
                               else ["escrow"]), paid_by
    assert -sum(sum(a) for a in paid_by.values()) == job.settlement["charged_micro"]
    paid_to = entries_of(books, provider_account("r-1"), job_id)
    assert all(len(a) == 1 for a in paid_to.values()), paid_to
    assert sum(sum(a) for a in paid_to.values()) == job.settlement["provider_paid_micro"]
    assert held_gpus(net, ["r-1"]) == {}
    # The command ran once: the new run took the first run's execution over.
    assert result.state == "SUCCEEDED", result
    (key,) = [m["key"] for entries in job.manifests.values() for m in entries]
    assert net.get("cat", key) == b"started\n"
    # One execute assignment, handed out once, taken over and completed by the new run.
    views = ViewDB(net.stack.settings)
    try:
        rows = views.query("SELECT kind, run_id, outcome FROM assignments"
                           " WHERE workflow_id = ? AND kind = ?", (workflow_id, EXECUTE_JOB))
    finally:
        views.close()
    assert [(r["run_id"], r["outcome"]) for r in rows] == [(run_id, "completed")], rows


def entries_of(books: Any, account: str, job_id: str) -> dict[str, list[int]]:
    """The amounts an account posted for this job, by kind of transfer (escrow, pay...)."""
    found: dict[str, list[int]] = {}
    for e in books.repository.event_store.get(books.account(account).id):
        if type(e).__name__ == "EntryPosted" and job_id in e.transfer_id:
            found.setdefault(e.transfer_id.split(":")[0], []).append(e.amount_micro)
    return found


async def test_resetting_a_job_after_its_command_ran_takes_the_run_over(
    net: Network, temporal_server: str
) -> None:
    """Reset once the command has run, while its outputs upload: the new run goes through
    the attempt again and takes the recorded results (and the upload still going) over. The
    job SUCCEEDS, its command ran once, its outputs were uploaded once and are the ones
    verified, and it is settled once."""
    job_id = submit(net, "dan", command="head -c 100000000 /dev/urandom > out.txt")
    client = await Client.connect(temporal_server,
                                  data_converter=net.stack.settings.temporal_converter())
    workflow_id = job_workflow_id(job_id)
    deadline = time.monotonic() + 60
    while "execution_finished:1" not in ledger(net).job(job_id).recorded:
        assert time.monotonic() < deadline, "the command did not finish"
        await asyncio.sleep(0.05)
    original = (await client.get_workflow_handle(workflow_id).describe()).run_id
    run_id = await reset(client, workflow_id, original,
                         (await reset_points(client, workflow_id, original))["after allocation"])
    at_reset = ledger(net).job(job_id).state  # where the reset stopped the first run
    assert at_reset in ("UPLOADING", "VERIFYING"), at_reset
    result = await client.get_workflow_handle(workflow_id, run_id=run_id,
                                              result_type=JobResult).result()
    assert result.state == "SUCCEEDED", (at_reset, result)
    books = ledger(net)
    job = books.job(job_id)
    events = Counter(type(e).__name__ for e in books.repository.event_store.get(job.id))
    assert events["ExecutionFinished"] == events["OutputsUploaded"] == 1, events
    assert events["FundsEscrowed"] == events["JobSettled"] == 1, events
    assert job.settlement is not None and result.charged_micro == job.settlement["charged_micro"]
    assert books.balance(escrow_account(job_id)) == 0
    (entry,) = [m for entries in job.manifests.values() for m in entries]
    assert digest.of_bytes(net.get("dan", entry["key"])) == entry["digest"]
    assert held_gpus(net, ["r-1"]) == {}
