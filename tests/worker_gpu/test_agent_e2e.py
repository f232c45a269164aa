"""A provider agent process taking its assignments from the provider API.

The control plane is not part of this test: a small recorder plays the API (the GraphQL
mutations and the provider API), hands out the assignments the test gives it and keeps
what the agent sends, so that it can be checked field by field. The whole path, real API
and real Temporal, is tested in tests/e2e and tests/adversarial.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from ops.launch import free_port
from protocol import digest
from tests.worker_gpu.agent_process import AgentProcess
from tests.worker_gpu.http_servers import GraphQLRecorder, StorageServer
from tests.worker_gpu.processes import host_pids, wait_for_host_pids
from workflows.contracts import (
    EXECUTE_JOB,
    STAGE_INPUTS,
    UPLOAD_OUTPUTS,
    ExecuteRequest,
    InputTransfer,
    OutputTransfer,
    StageRequest,
    UploadRequest,
)

pytestmark = pytest.mark.e2e


@dataclass
class RoundTrip:
    provider_id: str
    stage: StageRequest
    execute: ExecuteRequest
    upload: UploadRequest


@dataclass
class RoundTripResult:
    staged: dict[str, Any]
    executed: dict[str, Any]
    uploaded: dict[str, Any]


def _step(api: GraphQLRecorder, pid: str, kind: str, request: object) -> dict[str, Any]:
    # A short heartbeat timeout: the agent beats every 0.3 s, several times in a 1 s job.
    aid = api.assign(pid, kind, asdict(request), heartbeat_timeout_s=0.9)  # type: ignore[call-overload]
    what, body = api.report(aid)
    assert what == "complete", body
    result: dict[str, Any] = body["result"]
    return result


def round_trip(api: GraphQLRecorder, trip: RoundTrip) -> RoundTripResult:
    """Stage, execute, upload on one provider, one assignment after the other, as JobWorkflow
    gives them."""
    staged = _step(api, trip.provider_id, STAGE_INPUTS, trip.stage)
    executed = _step(api, trip.provider_id, EXECUTE_JOB, trip.execute)
    uploaded = _step(api, trip.provider_id, UPLOAD_OUTPUTS, trip.upload)
    return RoundTripResult(staged, executed, uploaded)


def _agent_env(api_port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "GPGPU_API_URL": f"http://127.0.0.1:{api_port}",
        "GPGPU_PROVIDER_HEARTBEAT_INTERVAL_S": "0.2",
        "GPGPU_HOME": str(tmp_path / "home"),
    }


def test_agent_registers_heartbeats_and_runs_a_job(tmp_path: Path) -> None:
    api_port = free_port()
    env = _agent_env(api_port, tmp_path)
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
            agent.wait_for("taking assignments for provider e2e-p1")
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
                                   digest.of_bytes(data), len(data))],
                ),
                ExecuteRequest("job-e2e", 1, ["python3", "-c", script], [1], timeout_s=60),
                UploadRequest(
                    "job-e2e", 1, [OutputTransfer("sum.txt", "out/sum.txt", storage.url("sum.txt"))]
                ),
            )  # fmt: skip
            result = round_trip(api, trip)

            assert result.staged == {"files": 1, "bytes": 4}
            assert result.executed["exit_code"] == 0
            assert result.executed["gpu_ms"] == result.executed["wall_ms"] >= 1000
            assert (tmp_path / "uploaded" / "sum.txt").read_text() == "7"
            assert result.uploaded["manifest"][0]["digest"] == digest.of_bytes(b"7")
            assert result.uploaded["missing"] == []
            # Each step heartbeated through the API while it ran.
            assert all(aid for aid, what, _ in api.step_calls if what == "heartbeat")
            assert any("elapsed_s" in b.get("details", {}) for _, what, b in api.step_calls
                       if what == "heartbeat")

            registration = api.named("registerProvider")[0]["variables"]["input"]
            assert registration["providerId"] == "e2e-p1"
            assert registration["sandbox"] == "bwrap"
            assert registration["region"] == "eu-west"
            assert registration["pricePerGpuHourMicro"] == 1_500_000
            assert [(g["index"], g["model"], g["memoryMb"]) for g in registration["gpus"]] == [
                (0, "H100", 81920),
                (1, "H100", 81920),
            ]
            time.sleep(0.5)  # a few more beats, after the job let go of its GPU
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


def test_sigterm_stops_the_agent_and_kills_its_running_job(tmp_path: Path) -> None:
    api_port = free_port()
    scratch = tmp_path / "scratch"
    args = ["--provider-id", "e2e-p2", "--simulate", "1xL4:24", "--scratch", str(scratch)]
    with GraphQLRecorder(api_port) as api:
        agent = AgentProcess([*args, "--shutdown-grace-s", "1"], _agent_env(api_port, tmp_path))
        try:
            agent.wait_for("taking assignments for provider e2e-p2")
            marker = f"120.{time.monotonic_ns() % 10**9}"  # found from outside its sandbox
            execute = ExecuteRequest("job-long", 1, ["sleep", marker], [0], 120)
            aid = api.assign("e2e-p2", EXECUTE_JOB, asdict(execute))
            agent.wait_for("job job-long: running")
            wait_for_host_pids(marker, "sleep")

            started = time.monotonic()
            code = agent.terminate()

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
            # The network hears of it now, not at its heartbeat timeout: the step failed.
            what, body = api.report(aid, timeout_s=1)
            assert what == "fail" and body["type"] == "AgentStopped", body
            assert body["cancelled"] is False
        finally:
            agent.kill()


def test_a_cancel_from_the_api_kills_the_job_and_is_reported(tmp_path: Path) -> None:
    api_port = free_port()
    scratch = tmp_path / "scratch"
    args = ["--provider-id", "e2e-p3", "--simulate", "1xL4:24", "--scratch", str(scratch)]
    with GraphQLRecorder(api_port) as api:
        agent = AgentProcess(args, _agent_env(api_port, tmp_path))
        try:
            agent.wait_for("taking assignments for provider e2e-p3")
            marker = f"120.{time.monotonic_ns() % 10**9}"
            execute = ExecuteRequest("job-c", 1, ["sleep", marker], [0], 120)
            aid = api.assign("e2e-p3", EXECUTE_JOB, asdict(execute), heartbeat_timeout_s=1.5)
            agent.wait_for("job job-c: running")
            wait_for_host_pids(marker, "sleep")
            api.cancelled.add(aid)  # the next heartbeat's answer: {"cancel": true}

            what, body = api.report(aid, timeout_s=10)

            assert what == "fail" and body["cancelled"] is True, body
            assert host_pids(marker) == []
            assert agent.terminate() == 0
        finally:
            agent.kill()
