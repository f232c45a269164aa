"""Operators find a job's workflow in Temporal by its search attributes.

A job through the real network is found by `GpgpuClient = "<client>"`, its
`GpgpuState` ends as SUCCEEDED, its history (with the upserts) replays against
today's code, and the admin CLI shows both. On a server without the attributes
registered a job's workflow still starts, with one warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import TypedSearchAttributes
from temporalio.worker import Replayer

from api import jobs
from tests.e2e.network import Network, network
from tests.support.graphql import SUBMIT
from tests.support.temporal import temporal_dev_server
from workflows import search_attributes as sa
from workflows.contracts import JobInput, job_workflow_id
from workflows.job import JobWorkflow

pytestmark = pytest.mark.e2e
GPGPU = str(Path(sys.executable).parent / "gpgpu")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("search"), temporal_server,
                 [("sa-h100", "1xH100:80", "2.0", [])]) as n:
        yield n


async def found_until(client: Client, query: str, done: Any, timeout_s: float = 30) -> Any:
    """Visibility is eventually consistent: ask until `done(executions)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        executions = [w async for w in client.list_workflows(query)]
        if done(executions):
            return executions
        assert time.monotonic() < deadline, f"{query}: {executions}"
        await asyncio.sleep(0.2)


def gpgpu(temporal: str, *args: str, home: Path) -> Any:
    """The operator CLI on this node (`home`: the network's, whose payload key it reads)."""
    env = {**os.environ, "GPGPU_TEMPORAL_ADDRESS": temporal, "GPGPU_HOME": str(home)}
    done = subprocess.run([GPGPU, *args, "--json"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_a_job_is_found_by_client_and_ends_succeeded(
    net: Network, temporal_server: str
) -> None:
    name = f"sa-{uuid.uuid4().hex[:8]}"
    client_id = net.client_id(name)
    body = {"name": "searchable", "command": "true", "max_price_per_gpu_hour": "4",
            "timeout": "1m", "resources": {"gpu_model": "H100"}}
    submitted = net.gql(SUBMIT, name, s=body)["submitJob"]
    assert submitted["__typename"] == "JobSubmitted", submitted
    job_id = submitted["job"]["id"]
    assert net.wait_job(job_id, ("SUCCEEDED", "FAILED"), name)["state"] == "SUCCEEDED"

    temporal = await Client.connect(temporal_server)
    query = f'GpgpuClient = "{client_id}"'
    (found,) = await found_until(temporal, query, lambda ws: ws and all(
        w.typed_search_attributes.get(sa.STATE) == "SUCCEEDED" for w in ws))
    assert found.id == job_workflow_id(job_id)
    assert found.status == WorkflowExecutionStatus.COMPLETED
    attrs = found.typed_search_attributes
    assert (attrs.get(sa.CLIENT), attrs.get(sa.GPU_MODEL), attrs.get(sa.NODE)) == (
        client_id, "H100", "local"
    )
    # Found by state too, among every job of the session's server.
    done = await found_until(temporal, sa.job_query(state="SUCCEEDED", client_id=client_id),
                             lambda ws: len(ws) == 1)
    assert done[0].id == found.id
    assert not [w async for w in temporal.list_workflows(
        sa.job_query(state="RUNNING", client_id=client_id))]

    # The upserts are in the history, and it replays against today's code.
    history = await temporal.get_workflow_handle(found.id).fetch_history()
    replayed = await Replayer(workflows=[JobWorkflow],
                              namespace=net.stack.settings.temporal_namespace,
                              data_converter=net.stack.settings.temporal_converter(),
                              ).replay_workflow(history)
    assert replayed.replay_failure is None

    # The admin CLI shows the same.
    shown = gpgpu(temporal_server, "admin", "workflow", job_id, home=net.stack.home)
    assert (shown["workflow_id"], shown["status"]) == (found.id, "COMPLETED")
    assert shown["search_attributes"]["GpgpuState"] == "SUCCEEDED"
    types = [e["type"] for e in shown["history"]]
    assert types[0] == "WORKFLOW_EXECUTION_STARTED"
    assert types[-1] == "WORKFLOW_EXECUTION_COMPLETED"
    # QUEUED, STAGING, RUNNING, UPLOADING, VERIFYING, SETTLING, SUCCEEDED
    assert types.count("UPSERT_WORKFLOW_SEARCH_ATTRIBUTES") >= 7
    assert "admit_job (local)" in [e["detail"] for e in shown["history"]]  # a control step
    listed = gpgpu(temporal_server, "admin", "jobs", "--state", "succeeded",
                   "--client", client_id, home=net.stack.home)
    assert [w["workflow_id"] for w in listed["workflows"]] == [found.id]


@pytest.fixture
def bare_temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dev server on which nobody registered GPGPU's search attributes."""
    with temporal_dev_server(tmp_path_factory.mktemp("bare"), wal=False,
                             search_attributes=False) as address:
        yield address


async def test_without_the_attributes_jobs_start_with_one_warning(
    bare_temporal: str, caplog: pytest.LogCaptureFixture
) -> None:
    temporal = await Client.connect(bare_temporal)
    caplog.set_level(logging.WARNING, logger="api.jobs")
    ids = []
    for n in range(2):
        job_input = JobInput(job_id=f"bare-{n}-{uuid.uuid4().hex[:6]}", client_id="alice")
        await jobs.start_job_workflow(temporal, job_input, "nobody-polls",
                                      sa.job_search_attributes("alice", None, "local"))
        ids.append(job_workflow_id(job_input.job_id))
    warnings = [r for r in caplog.records if "search attributes" in r.getMessage()]
    assert len(warnings) == 1, warnings
    for workflow_id in ids:
        info = await temporal.get_workflow_handle(workflow_id).describe()
        assert info.status == WorkflowExecutionStatus.RUNNING
        assert info.typed_search_attributes == TypedSearchAttributes.empty
        await temporal.get_workflow_handle(workflow_id).terminate("test over")
