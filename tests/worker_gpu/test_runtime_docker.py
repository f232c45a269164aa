"""The docker runtime against a real dockerd (started here by scripts/dockerd-up.sh) and a
real image made offline (scripts/make-test-image.sh): busybox, nothing else."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from infra.settings import Settings
from ops.launch import free_port
from protocol import digest
from tests.worker_gpu.agent_process import AgentProcess
from tests.worker_gpu.docker_fixtures import TEST_IMAGE, Engine, docker_engine
from tests.worker_gpu.http_servers import GraphQLRecorder, StorageServer
from tests.worker_gpu.step_env import StepEnvironment
from tests.worker_gpu.test_agent_e2e import RoundTrip, _agent_env, round_trip
from worker_gpu.__main__ import parse_args
from worker_gpu.activities import GpuActivities
from worker_gpu.agent import EXIT_NO_ENGINE, make_runtime, serve
from worker_gpu.config import AgentConfig
from worker_gpu.context import StepFailed
from worker_gpu.discovery import parse_simulated
from worker_gpu.runtime_docker import (
    LABEL_JOB,
    LABEL_PROVIDER,
    ContainerLimits,
    DockerRuntime,
    EngineUnavailable,
    ImageUnavailable,
    container_environment,
)
from worker_gpu.runtime_process import ProcessRuntime
from workflows.contracts import (
    ExecuteRequest,
    InputTransfer,
    OutputTransfer,
    StageRequest,
    UploadRequest,
)

LIMITS = ContainerLimits(memory_mb_per_gpu=256, cpus_per_gpu=1.0, pids=256)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with docker_engine() as started:
        yield started


@pytest.fixture
def client(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[docker.DockerClient]:
    monkeypatch.setenv("DOCKER_HOST", engine.docker_host)
    client = docker.DockerClient(base_url=engine.docker_host)
    yield client
    # Whatever a test did, no job container outlives it.
    left = client.containers.list(all=True, filters={"label": LABEL_JOB})
    client.close()
    assert [c.name for c in left] == []


@pytest.fixture
def runtime(client: docker.DockerClient) -> DockerRuntime:
    return DockerRuntime("p1", LIMITS, client=client, gpu_devices=False, tick_s=0.2)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "scratch" / "job-1" / "1" / "work"
    work.mkdir(parents=True)
    return work


def run(runtime: DockerRuntime, work: Path, script: str, **kwargs: Any) -> Any:
    kwargs.setdefault("image", TEST_IMAGE)
    kwargs.setdefault("job_id", "job-1")
    kwargs.setdefault("log_path", work.parent / "job.log")  # as the activity keeps it
    gpus = kwargs.pop("gpus", [0])
    timeout_s = kwargs.pop("timeout_s", 30)
    return runtime.run(["sh", "-c", script], work, gpus, timeout_s, kwargs.pop("env", {}), **kwargs)


# -- what a job sees and leaves ------------------------------------------------------


def test_a_job_reads_its_inputs_and_its_outputs_come_back(
    runtime: DockerRuntime, work: Path
) -> None:
    (work / "in.txt").write_bytes(b"input bytes\n")
    (work / "data").mkdir()

    outcome = run(
        runtime, work, "cat in.txt > out.txt; echo more >> out.txt; touch data/x; echo done"
    )

    assert (outcome.exit_code, outcome.timed_out, outcome.log_tail) == (0, False, "done\n")
    assert (work / "out.txt").read_bytes() == b"input bytes\nmore\n"
    # Given back to the agent, which reads, uploads and deletes them.
    for path in (work, work / "out.txt", work / "data", work / "data" / "x"):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.geteuid(), os.getegid())


def test_exit_code_and_stderr_come_back(runtime: DockerRuntime, work: Path) -> None:
    outcome = run(runtime, work, "echo out; echo err >&2; exit 7")

    assert (outcome.exit_code, outcome.timed_out) == (7, False)
    # Two pipes: the engine keeps each in order, not their interleaving.
    assert sorted(outcome.log_tail.splitlines()) == ["err", "out"]
    assert sorted((work.parent / "job.log").read_text().splitlines()) == ["err", "out"]


def test_the_environment_is_the_jobs_and_pins_the_gpus(
    runtime: DockerRuntime, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPGPU_PROVIDER_SECRET", "do-not-leak")
    env = {"FOO": "bar", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "NVIDIA_VISIBLE_DEVICES": "all"}

    outcome = run(runtime, work, "env | sort", gpus=[1, 3], env=env)

    lines = outcome.log_tail.splitlines()
    assert outcome.exit_code == 0
    assert "CUDA_VISIBLE_DEVICES=1,3" in lines
    assert "NVIDIA_VISIBLE_DEVICES=void" in lines  # simulated GPUs: no device at all
    assert "FOO=bar" in lines
    assert "HOME=/work" in lines
    assert "PATH=/bin" in lines  # the image's own, not the agent's
    assert "do-not-leak" not in outcome.log_tail


def test_real_gpus_are_numbered_from_zero_inside_the_container() -> None:
    env = container_environment([1, 3], {"NVIDIA_VISIBLE_DEVICES": "all"}, gpu_devices=True)

    # The engine passes GPUs 1 and 3 only; CUDA inside sees them as 0 and 1.
    assert (env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"]) == ("0,1", "1,3")
    assert container_environment([], {}, gpu_devices=True)["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_logs_stream_back_while_the_job_runs(runtime: DockerRuntime, work: Path) -> None:
    seen: list[tuple[float, str]] = []

    outcome = run(
        runtime,
        work,
        "echo first; sleep 1.2; echo second",
        on_progress=lambda elapsed, tail: seen.append((elapsed, tail)),
    )

    assert outcome.log_tail == "first\nsecond\n"
    assert any(tail == "first\n" for _, tail in seen), seen


def test_a_missing_image_is_named_and_nothing_is_pulled(runtime: DockerRuntime, work: Path) -> None:
    with pytest.raises(
        ImageUnavailable, match=re.escape("'no-such/image:1.0' is not on provider p1")
    ):
        run(runtime, work, "true", image="no-such/image:1.0")


def test_a_command_the_image_lacks_exits_127(runtime: DockerRuntime, work: Path) -> None:
    outcome = runtime.run(["python3", "-V"], work, [], 30, {}, image=TEST_IMAGE, job_id="job-1")

    assert outcome.exit_code == 127
    assert outcome.log_tail.startswith("cannot start 'python3': ")


# -- stopping ----------------------------------------------------------------------


def test_timeout_kills_and_removes_the_container(
    runtime: DockerRuntime, work: Path, client: docker.DockerClient
) -> None:
    started = time.monotonic()

    outcome = run(runtime, work, "echo started; sleep 60", timeout_s=1)

    assert (outcome.exit_code, outcome.timed_out) == (None, True)
    assert outcome.log_tail == "started\n"
    assert time.monotonic() - started < 4
    assert client.containers.list(all=True, filters={"label": f"{LABEL_PROVIDER}=p1"}) == []


def test_cancel_kills_within_two_seconds(runtime: DockerRuntime, work: Path) -> None:
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def cancel_soon() -> None:
        time.sleep(1.0)
        cancelled_at.append(time.monotonic())
        cancel.set()

    threading.Thread(target=cancel_soon, daemon=True).start()
    outcome = run(runtime, work, "sleep 60", cancel_event=cancel)

    assert (outcome.exit_code, outcome.timed_out) == (None, False)
    assert time.monotonic() - cancelled_at[0] < 2


def test_kill_all_stops_running_jobs(runtime: DockerRuntime, work: Path) -> None:
    threading.Timer(1.0, runtime.kill_all).start()
    started = time.monotonic()

    outcome = run(runtime, work, "sleep 60")

    assert outcome.exit_code == 137
    assert time.monotonic() - started < 5


def test_an_engine_lost_mid_job_is_an_engine_error(tmp_path: Path, work: Path) -> None:
    with docker_engine() as second:
        client = docker.DockerClient(base_url=second.docker_host)
        runtime = DockerRuntime("p1", LIMITS, client=client, gpu_devices=False)
        dockerd = int((second.folder / "dockerd.pid").read_text())

        def kill_once_running() -> None:
            end = time.monotonic() + 20
            while not (work / "made").exists() and time.monotonic() < end:
                time.sleep(0.05)
            os.kill(dockerd, signal.SIGKILL)

        threading.Thread(target=kill_once_running, daemon=True).start()

        with pytest.raises(EngineUnavailable, match="lost the Docker engine"):
            run(runtime, work, "touch /work/made; sleep 60")

        # The work dir is the agent's again, what the job made included.
        assert (work / "made").stat().st_uid == os.geteuid()


def test_sweep_removes_this_providers_leftovers_only(
    runtime: DockerRuntime, client: docker.DockerClient
) -> None:
    mine = client.containers.create(
        TEST_IMAGE, ["sleep", "60"], labels={LABEL_JOB: "old", LABEL_PROVIDER: "p1"}
    )
    mine.start()
    other = client.containers.create(
        TEST_IMAGE, ["true"], labels={LABEL_JOB: "other", LABEL_PROVIDER: "p2"}
    )
    try:
        assert runtime.sweep() == [mine.name]

        left = client.containers.list(all=True, filters={"label": LABEL_JOB})
        assert [c.name for c in left] == [other.name]
    finally:
        other.remove(force=True)


# -- hardening ---------------------------------------------------------------------


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on every address of the host; its port."""
    server = ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _host_addresses() -> list[str]:
    found = ["127.0.0.1"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
            found.append(s.getsockname()[0])
        except OSError:
            pass
    return found


def test_the_job_has_no_network(
    runtime: DockerRuntime, work: Path, client: docker.DockerClient, host_server: int
) -> None:
    fetch = "; ".join(
        f"timeout 3 wget -q -O - http://{a}:{host_server}/ 2>&1 || echo blocked"
        for a in _host_addresses()
    )
    # The same job asks for a network but this provider does not allow one.
    interfaces = "echo interfaces $(sed -n '3,$s/:.*//p' /proc/net/dev)"
    outcome = run(runtime, work, f"{interfaces}; {fetch}", network=True)

    lines = outcome.log_tail.splitlines()
    assert lines[0].startswith("gpgpu: the job asked for network access, which this provider")
    assert lines[1] == "interfaces lo"
    assert lines[3::2] == ["blocked"] * len(_host_addresses())
    for address, why in zip(_host_addresses(), lines[2::2], strict=True):
        assert why.startswith(f"wget: can't connect to remote host ({address}): ")

    # The check can fail: where the provider allows it, the same fetch gets through.
    allowed = DockerRuntime("p1", LIMITS, client=client, gpu_devices=False, job_network="host")
    outcome = run(allowed, work, fetch, network=True)
    assert "hello from the host" in outcome.log_tail


def test_the_job_runs_as_nobody_without_privileges(runtime: DockerRuntime, work: Path) -> None:
    outcome = run(
        runtime, work, "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status"
    )

    assert outcome.exit_code == 0
    assert outcome.log_tail.split() == [
        "65534", "65534",
        "CapEff:", "0000000000000000",
        "CapBnd:", "0000000000000000",
        "NoNewPrivs:", "1",
    ]  # fmt: skip


def test_the_job_writes_only_to_its_scratch(runtime: DockerRuntime, work: Path) -> None:
    script = (
        "for f in /x /etc/passwd /bin/sh /work/ok /tmp/ok /work/sub/ok; do"
        " mkdir -p /work/sub; if echo hi > $f; then echo wrote $f; else echo denied $f; fi;"
        " done 2>/dev/null"
    )

    outcome = run(runtime, work, script)

    assert outcome.log_tail.splitlines() == [
        "denied /x", "denied /etc/passwd", "denied /bin/sh",
        "wrote /work/ok", "wrote /tmp/ok", "wrote /work/sub/ok",
    ]  # fmt: skip
    assert (work / "sub" / "ok").read_text() == "hi\n"


def test_a_job_cannot_see_another_jobs_files(
    runtime: DockerRuntime, work: Path, tmp_path: Path
) -> None:
    other = tmp_path / "scratch" / "job-0" / "1" / "work"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("job 0's secret\n")

    outcome = run(
        runtime,
        work,
        f"cat {other}/secret.txt; cat /work/../job-0/1/work/secret.txt; "
        "find / -name secret.txt 2>/dev/null; ls -a /work; echo end",
    )

    assert "job 0's secret" not in outcome.log_tail
    assert outcome.log_tail.count("No such file or directory") == 2
    assert outcome.log_tail.endswith(".\n..\nend\n")  # find found nothing; /work is empty
    assert (other / "secret.txt").read_text() == "job 0's secret\n"


def test_what_a_job_leaves_cannot_reach_the_agents_files(
    runtime: DockerRuntime, work: Path, tmp_path: Path
) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_text("the provider's\n")
    os.chown(host_file, 1234, 1234)
    (work / "earlier-link").symlink_to(host_file)  # left by an earlier run in this dir

    outcome = run(
        runtime,
        work,
        "ln -s /etc/passwd /work/link; echo x > s; chmod 6755 s; ls -l s",
    )

    assert outcome.exit_code == 0
    assert outcome.log_tail.startswith("-rwsr-sr-x")  # the job could set them
    assert (host_file.stat().st_uid, host_file.stat().st_gid) == (1234, 1234)
    assert (work / "link").is_symlink() and os.readlink(work / "link") == "/etc/passwd"
    assert (work / "s").stat().st_mode & 0o7777 == 0o755  # set-id bits gone once it is ours


def test_the_pids_limit_holds(client: docker.DockerClient, work: Path) -> None:
    limits = ContainerLimits(256, 1.0, pids=32)
    runtime = DockerRuntime("p1", limits, client=client, gpu_devices=False)

    outcome = run(runtime, work, "for i in $(seq 200); do sleep 5 & done; echo spawned all")

    assert outcome.exit_code != 0
    assert "can't fork" in outcome.log_tail
    assert "spawned all" not in outcome.log_tail


def test_a_file_cannot_grow_past_the_disk_limit(client: docker.DockerClient, work: Path) -> None:
    limits = ContainerLimits(256, 1.0, disk_mb=4)
    runtime = DockerRuntime("p1", limits, client=client, gpu_devices=False)

    outcome = run(runtime, work, "head -c 6000000 /dev/zero > big; echo wrote")

    assert (work / "big").stat().st_size <= 4 * 2**20
    assert outcome.exit_code != 0


def test_the_work_dir_cannot_grow_past_the_disk_limit(
    client: docker.DockerClient, work: Path
) -> None:
    limits = ContainerLimits(256, 1.0, disk_mb=4)
    runtime = DockerRuntime("p1", limits, client=client, gpu_devices=False, tick_s=0.2)
    # Files each under the per-file limit, then wait to be noticed.
    script = "for i in 1 2 3 4; do head -c 3000000 /dev/urandom > f$i; done; sleep 30"

    outcome = run(runtime, work, script, timeout_s=60)

    assert outcome.exit_code == 137
    assert outcome.wall_ms < 15_000
    assert "grew past 4 MiB" in outcome.log_tail


def test_the_limits_are_set_on_the_container(
    runtime: DockerRuntime, work: Path, client: docker.DockerClient
) -> None:
    seen: dict[str, Any] = {}

    def inspect(elapsed: float, tail: str) -> None:
        if not seen:
            (container,) = client.containers.list(filters={"label": f"{LABEL_JOB}=job-1"})
            seen.update(container.attrs)

    outcome = run(
        runtime,
        work,
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null;"
        " sleep 0.5",
        gpus=[0, 1],
        on_progress=inspect,
    )

    host = seen["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 2 * 256 * 2**20  # two GPUs: two shares
    assert host["NanoCpus"] == 2 * 10**9
    assert host["PidsLimit"] == 256
    assert {u["Name"]: u["Hard"] for u in host["Ulimits"]} == {"fsize": 20 * 2**30, "core": 0}
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NetworkMode"] == "none"
    assert seen["Config"]["User"] == "65534:65534"
    assert seen["Config"]["Labels"] == {LABEL_JOB: "job-1", LABEL_PROVIDER: "p1"}
    assert outcome.log_tail.strip() == str(2 * 256 * 2**20)  # what the kernel enforces


def test_a_job_over_its_memory_is_killed_and_told(client: docker.DockerClient, work: Path) -> None:
    runtime = DockerRuntime("p1", ContainerLimits(32, 1.0), client=client, gpu_devices=False)

    outcome = run(runtime, work, "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo kept")

    assert outcome.exit_code == 137
    assert outcome.log_tail.endswith("gpgpu: the job ran out of memory (32 MiB)\n")


def test_gpus_are_requested_from_the_engine(client: docker.DockerClient, work: Path) -> None:
    if "nvidia" in client.info().get("Runtimes", {}):
        pytest.skip("this engine has the NVIDIA runtime: checked by scripts/gpu_check.sh")
    runtime = DockerRuntime("p1", LIMITS, client=client, gpu_devices=True)

    # Without NVIDIA's runtime the engine refuses the device request, which proves it was made.
    with pytest.raises(EngineUnavailable, match=r"could not select device driver .*\[\[gpu\]\]"):
        run(runtime, work, "true", gpus=[2, 3])


# -- through the execute activity and the agent ------------------------------------------


def _execute(acts: GpuActivities, request: ExecuteRequest) -> Any:
    return StepEnvironment().run(acts.execute_job, request)


def test_execute_runs_the_jobs_image(runtime: DockerRuntime, tmp_path: Path) -> None:
    acts = GpuActivities("p1", tmp_path / "scratch", runtime, gpu_indexes=[0, 1])
    request = ExecuteRequest("job-2", 1, ["sh", "-c", "echo hi > o.txt; cat o.txt"], [0], 30)
    request.image = TEST_IMAGE

    result = _execute(acts, request)

    assert (result.exit_code, result.log_tail) == (0, "hi\n")
    assert (acts.work_dir("job-2", 1) / "o.txt").read_text() == "hi\n"
    assert (acts.attempt_dir("job-2", 1) / "job.log").read_text() == "hi\n"


def test_execute_refuses_what_the_runtime_cannot_run(
    runtime: DockerRuntime, tmp_path: Path
) -> None:
    docker_acts = GpuActivities("p1", tmp_path / "a", runtime)
    process_acts = GpuActivities("p2", tmp_path / "b", ProcessRuntime())
    cases = [
        (docker_acts, None, "ImageRequiredError", "runs jobs only in containers"),
        (docker_acts, "gpgpu-test:missing", "ImageUnavailableError", "'gpgpu-test:missing'"),
        (process_acts, TEST_IMAGE, "RuntimeUnavailableError", "has no docker runtime"),
    ]
    for acts, image, type_, words in cases:
        request = ExecuteRequest("job-3", 1, ["true"], [], 30, image=image)

        with pytest.raises(StepFailed) as raised:
            _execute(acts, request)

        assert (raised.value.type, raised.value.non_retryable) == (type_, True)
        assert words in str(raised.value)


def _docker_config(**kwargs: Any) -> AgentConfig:
    return AgentConfig("p1", 1, simulate="2xL4:24", runtime="docker", **kwargs)


def test_the_agent_says_when_the_engine_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = f"unix://{tmp_path}/nothing.sock"
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.setenv("GPGPU_HOME", str(tmp_path))

    code = asyncio.run(serve(_docker_config(), Settings()))

    last = capsys.readouterr().out.splitlines()[-1]
    assert code == EXIT_NO_ENGINE
    assert last.startswith(f"the Docker engine at {host} does not answer: ")
    assert last.endswith("; start dockerd (or set DOCKER_HOST), or run with --runtime process")


def test_the_agent_sweeps_leftovers_and_states_its_limits(
    client: docker.DockerClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client.containers.create(TEST_IMAGE, ["true"], labels={LABEL_JOB: "j", LABEL_PROVIDER: "p1"})
    config = _docker_config(job_memory_mb_per_gpu=1000, job_cpus_per_gpu=2, allow_network=True)

    runtime = make_runtime(config, parse_simulated("2xL4:24", namespace="p1"))

    assert isinstance(runtime, DockerRuntime)
    assert (runtime.gpu_devices, runtime.job_network) == (False, "bridge")
    assert config.runtimes == ["docker"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("removed 1 containers left by an earlier run: ")
    assert lines[1] == (
        "docker runtime: per GPU 1000 MiB and 2 CPUs, 4096 pids, work dir 20480 MiB per job,"
        " network for jobs that ask"
    )


def test_the_runtime_fails_clearly_without_an_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")

    with pytest.raises(EngineUnavailable, match="does not answer"):
        DockerRuntime("p1", LIMITS)


def _cli_has_docker_runtime() -> bool:
    try:
        return parse_args(["--provider-id", "p1", "--runtime", "docker"]).runtime == "docker"
    except SystemExit:
        return False


@pytest.mark.e2e
@pytest.mark.skipif(
    not _cli_has_docker_runtime(), reason="worker_gpu/__main__.py does not parse --runtime yet"
)
def test_an_agent_with_the_docker_runtime_runs_a_job_in_its_image(
    engine: Engine, client: docker.DockerClient, tmp_path: Path
) -> None:
    api_port = free_port()
    env = {**_agent_env(api_port, tmp_path), "DOCKER_HOST": engine.docker_host}
    args = ["--provider-id", "e2e-d1", "--simulate", "1xH100:80", "--runtime", "docker"]
    agent = AgentProcess([*args, "--scratch", str(tmp_path / "scratch")], env)
    (tmp_path / "store").mkdir()
    (tmp_path / "uploaded").mkdir()
    data = b"3\n4\n"
    (tmp_path / "store" / "numbers.txt").write_bytes(data)
    try:
        with (
            GraphQLRecorder(api_port) as api,
            StorageServer(tmp_path / "store", tmp_path / "uploaded") as storage,
        ):
            agent.wait_for("taking assignments for provider e2e-d1")
            execute = ExecuteRequest(
                "job-d1", 1, ["sh", "-c", "sleep 1; cat numbers.txt > out.txt; id -u >> out.txt"],
                [0], timeout_s=60, image=TEST_IMAGE,
            )  # fmt: skip
            trip = RoundTrip(
                "e2e-d1",
                StageRequest(
                    "job-d1", 1,
                    [InputTransfer("numbers.txt", storage.url("numbers.txt"),
                                   digest.of_bytes(data), len(data))],
                ),
                execute,
                UploadRequest(
                    "job-d1", 1, [OutputTransfer("out.txt", "out/out.txt", storage.url("out.txt"))]
                ),
            )  # fmt: skip
            result = round_trip(api, trip)

            assert result.executed["exit_code"] == 0
            assert (tmp_path / "uploaded" / "out.txt").read_bytes() == b"3\n4\n65534\n"
            assert not (tmp_path / "scratch" / "job-d1").exists()  # upload removed the attempt
            registration = api.named("registerProvider")[0]["variables"]["input"]
            assert registration["runtimes"] == ["docker"]
        assert agent.terminate() == 0
        assert "Traceback" not in agent.output
    finally:
        agent.kill()
