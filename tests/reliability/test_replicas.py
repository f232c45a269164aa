"""Two API servers and two control workers on one Temporal server and one PostgreSQL store.

A fresh schema of the `test` database (as tests/domain/support.py makes one) holds the
event log and the read models for all four processes; both control workers serve the
same task queue and each runs its own scheduler. 40 jobs from two clients, submitted
through the two APIs in turn, on two providers of 2 GPUs each (each provider talks to its
own API), so jobs wait for GPUs and both schedulers place them. Then:

- every job SUCCEEDED, once (one terminal event, one settlement), and both APIs' read
  models say so;
- no event twice: notification ids strictly increase (PostgreSQL's sequence may skip a
  number when a conflicting insert rolls back; no id repeats), no aggregate version twice;
- no GPU double-booked: replaying GpusReserved and GpusReleased in log order, no GPU is
  reserved while another job holds it; and none leaked: each reservation matches an
  allocation of its job to that provider, and every GPU is free once the jobs ended;
- both control workers did work: each ran control activities (Temporal's histories name
  the worker, pid@host, that started each activity);
- the ledger balances and each client paid once per job.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.e2e.network import CREDITS_MICRO
from tests.reliability.harness import Cluster, EventLog, submit_many
from tests.reliability.ledger import (
    assert_each_job_ended_once,
    assert_ledger_balances,
    double_bookings,
    leaked_gpus,
)
from tests.support.stores import store_settings
from workflows.contracts import GPU_STEPS, job_workflow_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

JOBS = 40
CLIENTS = ("ray", "sue")
SPEC = {"name": "rep", "command": "sleep 0.3", "max_price_per_gpu_hour": "2", "timeout": "1m"}
APIS = ("api-1", "api-2")
WORKERS = ("control-1", "control-2")
PROVIDERS = (("rep-a", "api-1"), ("rep-b", "api-2"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Cluster]:
    home: Path = tmp_path_factory.mktemp("replicas")
    with store_settings("postgres", home) as settings:
        EventLog(settings)  # the event store's tables, made once before four processes race
        cluster = Cluster.create(home, temporal_server, settings=settings)
        try:
            for api in APIS:  # one after the other: each makes the view tables if missing
                cluster.start_api(api)
            for worker, api in zip(WORKERS, APIS, strict=True):
                cluster.start_control_worker(worker, api)
            cluster.wait_control_workers(WORKERS)
            for provider_id, api in PROVIDERS:
                cluster.start_provider(provider_id, "2xH100:80", "1.0", api)
            cluster.wait_providers_online([p for p, _ in PROVIDERS])
            yield cluster
        finally:
            cluster.stop()


def control_identities(address: str, job_ids: list[str]) -> Counter[str]:
    """Which worker (pid@host) ran each workflow task (the control steps run inside them, as
    local activities) and started each control activity (allocation) of these jobs."""

    async def read() -> Counter[str]:
        client = await Client.connect(address)
        found: Counter[str] = Counter()
        for job_id in job_ids:
            history = await client.get_workflow_handle(job_workflow_id(job_id)).fetch_history()
            queues = {}
            for e in history.events:
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                    found[e.workflow_task_started_event_attributes.identity] += 1
                elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    scheduled = e.activity_task_scheduled_event_attributes
                    queues[e.event_id] = scheduled.activity_type.name
                elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                    started = e.activity_task_started_event_attributes
                    if queues[started.scheduled_event_id] not in GPU_STEPS:  # assignments
                        found[started.identity] += 1
        return found

    return asyncio.run(read())


def test_two_apis_and_two_control_workers_share_the_work_without_doubles(
    cluster: Cluster,
) -> None:
    nets = [cluster.net(api) for api in APIS]
    log = EventLog(cluster.settings)
    jobs = [(CLIENTS[n % 2], SPEC) for n in range(JOBS)]
    job_ids = submit_many(nets, jobs)  # the n-th through APIS[n % 2]
    clients = {j: nets[0].client_id(CLIENTS[n % 2]) for n, j in enumerate(job_ids)}

    ends = log.wait_ended(job_ids, timeout_s=240)
    assert set(ends.values()) == {"JobSucceeded"}, Counter(ends.values())
    assert_each_job_ended_once(log, job_ids)

    log.read()
    assert log.ids == sorted(set(log.ids)), "notification ids repeat or go backwards"
    versions = Counter((e.originator_id, e.originator_version) for e in log.events)
    assert max(versions.values()) == 1, "an aggregate version was recorded twice"
    assert not double_bookings(log), double_bookings(log)[:5]
    identities = control_identities(cluster.temporal_address, job_ids)
    host = socket.gethostname()
    by_worker = {w: identities[f"{cluster.procs[w].pid}@{host}"] for w in WORKERS}
    print(f"\nworkflow tasks and control activities by each worker: {by_worker}")
    assert all(by_worker.values()), f"a control worker did no work: {by_worker}, {identities}"

    assert_ledger_balances(log, job_ids, clients, CREDITS_MICRO)
    for net in nets:  # each API's read model (the same PostgreSQL views) shows every job
        states: Counter[str] = Counter()
        for client in CLIENTS:
            jobs_seen = net.gql("query { jobs(limit: 500) { id state } }", client)["jobs"]
            states.update(j["state"] for j in jobs_seen if j["id"] in clients)
        assert states == {"SUCCEEDED": JOBS}, (net.url, states)
    # Last, as it fails while Network.place reserves GPUs for an allocation another
    # scheduler already made (see leaked_gpus).
    assert not leaked_gpus(log), leaked_gpus(log)[:5]
