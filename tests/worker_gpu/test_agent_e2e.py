"""A provider agent process serving its task queue on a real Temporal dev server.

The API is not part of this test: a small recorder answers the two GraphQL
mutations, so what the agent sends can be checked field by field.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from infra.devstack import free_port
from tests.worker_gpu.agent_process import AgentProcess
from tests.worker_gpu.http_servers import GraphQLRecorder, StorageServer
from tests.worker_gpu.processes import host_pids, wait_for_host_pids
from workflows.contracts import (
    EXECUTE_JOB,
    STAGE_INPUTS,
    UPLOAD_OUTPUTS,
    ExecuteRequest,
    ExecuteResult,
    InputTransfer,
    OutputTransfer,
    StageRequest,
    StageResult,
    UploadRequest,
    UploadResult,
    gpu_task_queue,
)

pytestmark = pytest.mark.e2e

T = TypeVar("T")


@dataclass
class RoundTrip:
    provider_id: str
    stage: StageRequest
    execute: ExecuteRequest
    upload: UploadRequest


@dataclass
class RoundTripResult:
    staged: StageResult
    executed: ExecuteResult
    uploaded: UploadResult


async def _on_provider(queue: str, activity: str, request: object, result_type: type[T]) -> T:
    result: T = await workflow.execute_activity(
        activity,
        request,
        result_type=result_type,
        task_queue=queue,
        start_to_close_timeout=timedelta(seconds=60),
        heartbeat_timeout=timedelta(seconds=10),
        retry_policy=RetryPolicy(maximum_attempts=1),
    )
    return result


@workflow.defn
class ProviderRoundTrip:
    """Stage, execute, upload on one provider's queue, by activity name as JobWorkflow does."""

    @workflow.run
    async def run(self, trip: RoundTrip) -> RoundTripResult:
        queue = gpu_task_queue(trip.provider_id)
        staged = await _on_provider(queue, STAGE_INPUTS, trip.stage, StageResult)
        executed = await _on_provider(queue, EXECUTE_JOB, trip.execute, ExecuteResult)
        uploaded = await _on_provider(queue, UPLOAD_OUTPUTS, trip.upload, UploadResult)
        return RoundTripResult(staged, executed, uploaded)


@workflow.defn
class ExecuteOnProvider:
    @workflow.run
    async def run(self, trip: RoundTrip) -> ExecuteResult:
        return await workflow.execute_activity(
            EXECUTE_JOB,
            trip.execute,
            result_type=ExecuteResult,
            task_queue=gpu_task_queue(trip.provider_id),
            start_to_close_timeout=timedelta(seconds=120),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


def _agent_env(temporal_address: str, api_port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "GPGPU_TEMPORAL_ADDRESS": temporal_address,
        "GPGPU_API_URL": f"http://127.0.0.1:{api_port}",
        "GPGPU_PROVIDER_HEARTBEAT_INTERVAL_S": "0.2",
        "GPGPU_HOME": str(tmp_path / "home"),
    }


async def test_agent_registers_heartbeats_and_runs_a_job(
    temporal_address: str, tmp_path: Path
) -> None:
    api_port = free_port()
    env = _agent_env(temporal_address, api_port, tmp_path)
    args = ["--provider-id", "e2e-p1", "--simulate", "2xH100:80", "--price", "1.5"]
    agent = AgentProcess(
        [*args, "--region", "eu-west", "--scratch", str(tmp_path / "scratch")], env
    )
    (tmp_path / "store").mkdir()
    (tmp_path / "uploaded").mkdir()
    try:
        # The API comes up after the agent: it waits, then registers.
        agent.wait_for("waiting for the API")
        with (
            GraphQLRecorder(api_port) as api,
            StorageServer(tmp_path / "store", tmp_path / "uploaded") as storage,
        ):
            agent.wait_for("serving task queue gpu.e2e-p1")
            data = b"3\n4\n"
            (tmp_path / "store" / "numbers.txt").write_bytes(data)
            script = (
                "import time; time.sleep(1); "
                "n = [int(x) for x in open('numbers.txt')]; open('sum.txt', 'w').write(str(sum(n)))"
            )
            trip = RoundTrip(
                "e2e-p1",
                StageRequest(
                    "job-e2e", 1,
                    [InputTransfer("numbers.txt", storage.url("numbers.txt"),
                                   hashlib.sha256(data).hexdigest(), len(data))],
                ),
                ExecuteRequest("job-e2e", 1, ["python3", "-c", script], [1], timeout_s=60),
                UploadRequest(
                    "job-e2e", 1, [OutputTransfer("sum.txt", "out/sum.txt", storage.url("sum.txt"))]
                ),
            )  # fmt: skip
            client = await Client.connect(temporal_address)
            async with Worker(
                client,
                task_queue="test-provider-round-trip",
                workflows=[ProviderRoundTrip],
                workflow_runner=UnsandboxedWorkflowRunner(),
            ):
                result = await client.execute_workflow(
                    ProviderRoundTrip.run,
                    trip,
                    id="provider-round-trip",
                    task_queue="test-provider-round-trip",
                    execution_timeout=timedelta(seconds=60),
                )

            assert result.staged == StageResult(files=1, bytes=4)
            assert result.executed.exit_code == 0
            assert result.executed.gpu_ms == result.executed.wall_ms >= 1000
            assert (tmp_path / "uploaded" / "sum.txt").read_text() == "7"
            assert result.uploaded.manifest[0].sha256 == hashlib.sha256(b"7").hexdigest()
            assert result.uploaded.missing == []

            registration = api.named("registerProvider")[0]["variables"]["input"]
            assert registration["providerId"] == "e2e-p1"
            assert registration["sandbox"] == "bwrap"
            assert registration["region"] == "eu-west"
            assert registration["pricePerGpuHourMicro"] == 1_500_000
            assert [(g["index"], g["model"], g["memoryMb"]) for g in registration["gpus"]] == [
                (0, "H100", 81920),
                (1, "H100", 81920),
            ]
            await asyncio.sleep(0.5)  # a few more beats, after the job let go of its GPU
            beats = api.named("providerHeartbeat")
            assert all(b["variables"]["id"] == "e2e-p1" for b in beats)
            utilization = [[g["utilization_pct"] for g in b["variables"]["t"]] for b in beats]
            assert [0, 100] in utilization, "GPU 1 reads busy while the job holds it"
            assert utilization[-1] == [0, 0]
            assert set(beats[-1]["variables"]["t"][0]) == {
                "index", "utilization_pct", "memory_used_mb", "temperature_c", "power_w",
                "ecc_errors", "xid_errors",
            }  # fmt: skip

        assert agent.terminate() == 0
        assert agent.lines[-1] == "stopped"
        assert "Traceback" not in agent.output
        print(agent.output)
    finally:
        agent.kill()


async def test_sigterm_stops_the_agent_and_kills_its_running_job(
    temporal_address: str, tmp_path: Path
) -> None:
    api_port = free_port()
    scratch = tmp_path / "scratch"
    args = ["--provider-id", "e2e-p2", "--simulate", "1xL4:24", "--scratch", str(scratch)]
    with GraphQLRecorder(api_port) as api:
        agent = AgentProcess(
            [*args, "--shutdown-grace-s", "1"], _agent_env(temporal_address, api_port, tmp_path)
        )
        try:
            agent.wait_for("serving task queue gpu.e2e-p2")
            marker = f"120.{time.monotonic_ns() % 10**9}"  # found from outside its sandbox
            execute = ExecuteRequest("job-long", 1, ["sleep", marker], [0], 120)
            trip = RoundTrip("e2e-p2", StageRequest("job-long", 1, []), execute,
                             UploadRequest("job-long", 1, []))  # fmt: skip
            client = await Client.connect(temporal_address)
            async with Worker(
                client,
                task_queue="test-execute-long",
                workflows=[ExecuteOnProvider],
                workflow_runner=UnsandboxedWorkflowRunner(),
            ):
                handle = await client.start_workflow(
                    ExecuteOnProvider.run, trip, id="execute-long", task_queue="test-execute-long"
                )
                # Blocking waits go to a thread: this loop runs the workflow worker.
                await asyncio.to_thread(agent.wait_for, "job job-long: running")
                await asyncio.to_thread(wait_for_host_pids, marker, "sleep")

                started = time.monotonic()
                code = await asyncio.to_thread(agent.terminate)

                assert code == 0
                assert time.monotonic() - started < 10
                assert agent.lines[-1] == "stopped"
                assert host_pids(marker) == [], "no job outlives its agent"
                # Drained first: the heartbeat fell silent, then the agent told the API it
                # takes no new work, before the running job was stopped.
                kinds = ["drain" if "drainProvider" in c["query"] else "beat"
                         for c in api.calls if "registerProvider" not in c["query"]]
                assert kinds[-1] == "drain" and kinds.count("drain") == 1, kinds
                assert api.named("drainProvider")[0]["variables"] == {"id": "e2e-p2"}
                # The workflow hears of it now, not at its heartbeat timeout.
                with pytest.raises(WorkflowFailureError):
                    await asyncio.wait_for(handle.result(), timeout=10)
        finally:
            agent.kill()
