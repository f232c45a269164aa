"""The process runtime, on the real bubblewrap sandbox (and once without it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker_gpu.processes import host_pids, wait_for_host_pids
from worker_gpu.cgroup import Cgroups, JobCgroup, detect
from worker_gpu.joblog import LOG_TAIL_BYTES
from worker_gpu.runtime_process import ProcessRuntime
from worker_gpu.sandbox import Bwrap, JobLimits, SandboxUnavailable

pytestmark = pytest.mark.skipif(not Bwrap.installed(), reason="bubblewrap is not installed")


def _marker() -> str:
    """A sleep length no other process uses, to find the job's processes from outside."""
    return f"1000.{uuid.uuid4().int % 10**9}"


@pytest.fixture
def runtime() -> ProcessRuntime:
    return ProcessRuntime(kill_grace_s=0.5, tick_s=0.2)


def test_exit_code_and_log_tail(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = "import sys; print('x' * 10000); print('last line'); sys.exit(3)"

    exit_code, timed_out, wall_ms, tail = runtime.run(
        ["python3", "-c", script], tmp_path, [0], timeout_s=30, env={}
    )

    assert (exit_code, timed_out) == (3, False)
    assert 0 < wall_ms < 30_000
    assert tail.endswith("last line\n")
    assert len(tail.encode()) <= LOG_TAIL_BYTES
    assert (tmp_path / "job.log").stat().st_size > 10000


def test_stderr_goes_to_the_log_file_given(runtime: ProcessRuntime, tmp_path: Path) -> None:
    log_path = tmp_path / "job.log"

    outcome = runtime.run(
        ["sh", "-c", "echo out; echo err >&2"], tmp_path / "work", [], 30, {}, log_path=log_path
    )

    assert outcome.exit_code == 0
    assert log_path.read_text() == "out\nerr\n"
    assert outcome.log_tail == "out\nerr\n"


def test_timeout_kills_the_whole_sandbox(runtime: ProcessRuntime, tmp_path: Path) -> None:
    # A child of a child, ignoring SIGTERM.
    marker = _marker()
    script = f"trap '' TERM; sh -c 'sleep {marker}'; sleep 60"
    started = time.monotonic()

    outcome = runtime.run(["bash", "-c", script], tmp_path, [0], timeout_s=1, env={})

    assert (outcome.exit_code, outcome.timed_out) == (None, True)
    assert time.monotonic() - started < 5
    assert host_pids(marker) == []


def test_no_process_outlives_the_job_setsid_daemons_included(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    marker = _marker()
    script = f"sleep {marker} & setsid sleep {marker} & (setsid sh -c 'sleep {marker}' &); exit 0"

    outcome = runtime.run(["bash", "-c", script], tmp_path, [], 30, {})

    assert outcome.exit_code == 0
    assert host_pids(marker) == []


def test_cancel_event_stops_the_job(runtime: ProcessRuntime, tmp_path: Path) -> None:
    marker = _marker()
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()

    outcome = runtime.run(["sleep", marker], tmp_path, [], 60, {}, cancel_event=cancel)

    assert (outcome.exit_code, outcome.timed_out) == (None, False)
    assert outcome.wall_ms < 5000
    assert host_pids(marker) == []


def test_environment_is_only_the_jobs_and_gpus_pinned(
    runtime: ProcessRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_X", "provider-credential")
    job_env = {"FOO": "bar", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "HOME": "/root"}
    # Every process of the sandbox, bwrap's own PID 1 included, has only the job's env.
    every = runtime.run(["sh", "-c", "cat /proc/[0-9]*/environ"], tmp_path, [], 30, {})

    outcome = runtime.run(["env"], tmp_path, [0, 2], 30, job_env)

    assert "GPGPU_JOB_DIR=/work" in every.log_tail
    assert "SECRET_X" not in every.log_tail and "provider-credential" not in every.log_tail

    env = dict(line.split("=", 1) for line in outcome.log_tail.splitlines())
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert (env["HOME"], env["GPGPU_JOB_DIR"], env["TMPDIR"]) == ("/work", "/work", "/tmp")
    assert env["FOO"] == "bar"
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "CUDA_VISIBLE_DEVICES"} | {
        "GPGPU_JOB_DIR",
        "FOO",
        "PWD",  # some env(1) builds add it
    }


def test_runs_in_its_work_dir_at_work(runtime: ProcessRuntime, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "input.txt").write_text("staged")

    outcome = runtime.run(["sh", "-c", "pwd; cat input.txt"], tmp_path / "work", [], 30, {})

    assert outcome.log_tail == "/work\nstaged"


def test_progress_is_reported_while_running(runtime: ProcessRuntime, tmp_path: Path) -> None:
    calls: list[tuple[float, str]] = []

    runtime.run(
        ["sh", "-c", "echo started; sleep 1.2"],
        tmp_path,
        [],
        30,
        {},
        on_progress=lambda elapsed, tail: calls.append((elapsed, tail)),
    )

    assert len(calls) >= 4
    assert calls[-1][1] == "started\n"
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_missing_command_reads_as_exit_127(runtime: ProcessRuntime, tmp_path: Path) -> None:
    outcome = runtime.run(["no-such-command-xyz"], tmp_path, [], 30, {})

    assert outcome.exit_code == 127
    assert "no-such-command-xyz" in outcome.log_tail


def test_killed_by_a_signal_reads_as_128_plus_signal(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    outcome = runtime.run(["sh", "-c", "kill -KILL $$"], tmp_path, [], 30, {})

    assert outcome.exit_code == 137


def test_memory_limit_caps_each_process(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = "b = bytearray(512 * 1024 * 1024)"

    limited = runtime.run(["python3", "-c", script], tmp_path, [], 30, {}, memory_limit_mb=200)
    unlimited = runtime.run(["python3", "-c", script], tmp_path, [], 30, {})

    assert limited.exit_code == 1
    assert "MemoryError" in limited.log_tail
    assert unlimited.exit_code == 0


def test_kill_all_stops_running_jobs(runtime: ProcessRuntime, tmp_path: Path) -> None:
    marker = _marker()
    result: list[int | None] = []
    thread = threading.Thread(
        target=lambda: result.append(runtime.run(["sleep", marker], tmp_path, [], 60, {}).exit_code)
    )
    thread.start()
    wait_for_host_pids(marker, "sleep")

    runtime.kill_all()
    thread.join(timeout=5)

    assert result == [137]
    assert host_pids(marker) == []
    assert os.listdir(tmp_path)  # the log is there


# -- what the sandbox keeps from the job ----------------------------------------------------


def test_the_job_is_nobody_and_its_files_come_back_to_the_agent(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    work = tmp_path / "work"

    outcome = runtime.run(["sh", "-c", "id -u; echo made > made.txt; mkdir d; touch d/f"],
                          work, [], 30, {})  # fmt: skip

    assert outcome.exit_code == 0, outcome.log_tail
    assert outcome.log_tail == "65534\n"
    for path in (work, work / "made.txt", work / "d", work / "d" / "f"):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.geteuid(), os.getegid())
    assert (work / "made.txt").read_text() == "made\n"
    (work / "made.txt").unlink()
    (work / "d" / "f").unlink()


def test_the_job_sees_no_file_of_the_agent(runtime: ProcessRuntime, tmp_path: Path) -> None:
    secret = tmp_path / "dev-account.json"
    secret.write_text("admin key")
    neighbour = tmp_path / "other-job" / "work"
    neighbour.mkdir(parents=True)
    (neighbour / "input.bin").write_text("someone else's data")
    script = (
        f"cat {secret}; cat {neighbour}/input.bin; cat ../other-job/work/input.bin;"
        " cat ../../../other-job/work/input.bin; ls /root /home /etc/shadow /var /run /opt;"
        " echo written > /usr/evil; echo written > /etc/evil; echo written > /evil;"
        " ls /etc; echo end"
    )

    outcome = runtime.run(["sh", "-c", script], tmp_path / "work", [], 30, {})

    log = outcome.log_tail
    assert "admin key" not in log and "someone else" not in log
    assert log.count("No such file or directory") >= 8
    assert log.count("Read-only file system") == 3
    listed = set(log.split("Read-only file system\n")[-1].split("\n")[:-2])
    assert "passwd" in listed and "ld.so.cache" in listed
    assert not listed & {"shadow", "gshadow", "ssl/private", "ceph", "docker", "mysql"}
    assert not Path("/usr/evil").exists() and not Path("/etc/evil").exists()


def test_the_job_sees_only_its_own_processes(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = f"cat /proc/{os.getpid()}/environ; ls /proc | grep -c '^[0-9]'; kill -0 {os.getpid()}"

    outcome = runtime.run(["sh", "-c", script], tmp_path, [], 30, {"AGENT": str(os.getpid())})

    lines = outcome.log_tail.splitlines()
    assert "No such file or directory" in lines[0]
    assert int(lines[1]) <= 4  # bwrap's init, sh, ls, grep
    assert outcome.exit_code != 0  # kill -0 of the agent's pid: no such process in here


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on 127.0.0.1 (a stand-in for the API, PostgreSQL or Temporal)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


CONNECT = (
    "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2)"
    "; print('connected')"
)


def test_no_network_unless_asked_and_allowed(
    runtime: ProcessRuntime, tmp_path: Path, listener: int
) -> None:
    job = ["python3", "-c", CONNECT, str(listener)]
    allowed = ProcessRuntime(kill_grace_s=0.5, allow_network=True)

    by_default = runtime.run(job, tmp_path / "a", [], 30, {})
    asked_not_allowed = runtime.run(job, tmp_path / "b", [], 30, {}, network=True)
    allowed_not_asked = allowed.run(job, tmp_path / "c", [], 30, {})
    asked_and_allowed = allowed.run(job, tmp_path / "d", [], 30, {}, network=True)

    for refused in (by_default, asked_not_allowed, allowed_not_asked):
        assert refused.exit_code == 1 and "ConnectionRefusedError" in refused.log_tail
    assert "which this provider does not allow" in asked_not_allowed.log_tail
    assert (asked_and_allowed.exit_code, asked_and_allowed.log_tail) == (0, "connected\n")


def test_a_fork_bomb_stops_at_the_process_limit(tmp_path: Path) -> None:
    runtime = ProcessRuntime(kill_grace_s=0.5, limits=JobLimits(pids=20))
    marker = _marker()
    bomb = (
        f"import os, time  # {marker}\n"
        "n = 0\n"
        "try:\n"
        "    while n < 500:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as err:\n"
        "    print('forked', n, err.errno)\n"
    )

    outcome = runtime.run(["python3", "-c", bomb], tmp_path, [], 30, {})

    word, forked, errno = outcome.log_tail.split()
    assert (word, errno) == ("forked", "11")  # EAGAIN
    assert 10 < int(forked) < 20
    assert host_pids(marker) == []


def test_two_jobs_each_get_the_whole_process_limit(tmp_path: Path) -> None:
    # RLIMIT_NPROC counts per user namespace: jobs side by side do not share it.
    runtime = ProcessRuntime(kill_grace_s=0.5, limits=JobLimits(pids=30))
    script = "for i in $(seq 20); do sleep 2 & done; wait; echo all-forked"
    outcomes: list[str] = []
    threads = [
        threading.Thread(
            target=lambda d=d: outcomes.append(
                runtime.run(["bash", "-c", script], tmp_path / d, [], 30, {}).log_tail
            )
        )
        for d in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes == ["all-forked\n", "all-forked\n"]


def test_a_file_cannot_grow_past_the_disk_limit(tmp_path: Path) -> None:
    runtime = ProcessRuntime(kill_grace_s=0.5, limits=JobLimits(disk_mb=4))

    outcome = runtime.run(["sh", "-c", "head -c 6000000 /dev/zero > big; ls -l big"],
                          tmp_path / "work", [], 30, {})  # fmt: skip

    assert (tmp_path / "work" / "big").stat().st_size <= 4 * 2**20
    assert "File size limit exceeded" in outcome.log_tail or outcome.exit_code != 0


def test_the_work_dir_cannot_grow_past_the_disk_limit(tmp_path: Path) -> None:
    runtime = ProcessRuntime(kill_grace_s=0.5, tick_s=0.2, limits=JobLimits(disk_mb=4))
    # Files under the per-file limit, many of them, then wait to be noticed.
    script = "for i in 1 2 3 4; do head -c 3000000 /dev/urandom > f$i; done; sleep 30"

    outcome = runtime.run(["sh", "-c", script], tmp_path / "work", [], 60, {})

    assert outcome.exit_code == 137
    assert outcome.wall_ms < 10_000
    assert "grew past 4 MiB" in outcome.log_tail


def test_tmp_is_private_and_size_limited(tmp_path: Path) -> None:
    runtime = ProcessRuntime(kill_grace_s=0.5, limits=JobLimits(tmp_mb=2))
    (Path("/tmp") / f"agent-{os.getpid()}").write_text("host tmp")
    try:
        outcome = runtime.run(
            ["sh", "-c", "ls /tmp; head -c 3000000 /dev/zero > /tmp/x;"
             " head -c 3000000 /dev/zero > /dev/shm/x; echo end"],
            tmp_path, [], 30, {},
        )  # fmt: skip
    finally:
        (Path("/tmp") / f"agent-{os.getpid()}").unlink()

    assert "agent-" not in outcome.log_tail
    assert outcome.log_tail.count("No space left on device") == 2


def test_without_bubblewrap_the_runtime_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")

    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        ProcessRuntime()


def test_a_bwrap_that_cannot_sandbox_is_refused_at_the_check() -> None:
    Bwrap().check()  # this machine's

    with pytest.raises(SandboxUnavailable, match="cannot create a sandbox"):
        Bwrap("/bin/false").check()


def test_unsafe_no_sandbox_runs_a_plain_process(tmp_path: Path) -> None:
    runtime = ProcessRuntime(kill_grace_s=0.5, unsafe_no_sandbox=True)

    outcome = runtime.run(["sh", "-c", "pwd; echo $HOME"], tmp_path / "w", [], 30, {})

    assert runtime.sandbox_name == "none"
    assert outcome.log_tail == f"{tmp_path / 'w'}\n{tmp_path / 'w'}\n"


AGENT = """
import sys
from pathlib import Path
from worker_gpu.cgroup import Cgroups, JobCgroup, detect
from worker_gpu.runtime_process import ProcessRuntime
ProcessRuntime().run(["sh", "-c", "setsid sleep %s & sleep %s" % (sys.argv[1], sys.argv[1])],
                     Path(sys.argv[2]), [], 60, {})
"""


def test_a_killed_agent_leaves_no_job_behind(tmp_path: Path) -> None:
    marker = _marker()
    agent = subprocess.Popen([sys.executable, "-c", AGENT, marker, str(tmp_path / "w")],
                             cwd=Path(__file__).parents[2])  # fmt: skip
    try:
        wait_for_host_pids(marker, "sleep", timeout_s=30)

        agent.kill()  # SIGKILL: no cleanup of its own runs
        agent.wait()
        end = time.monotonic() + 5
        while host_pids(marker) and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        agent.kill()

    assert host_pids(marker) == []


# -- limits for the job as a whole (control groups, worker_gpu/cgroup.py) -------------------

_FOUR_HOLDERS = (
    'for i in 1 2 3 4; do python3 -c \'import time, sys; b = b"x" * (100 << 20); '
    'time.sleep(3); open("done." + sys.argv[1], "w")\' $i & done; wait'
)


@pytest.mark.skipif(detect() is None, reason="no per-job control groups on this machine")
def test_memory_is_limited_for_the_job_as_a_whole_not_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four processes of 100 MiB each, each under the 200 MiB limit, 400 MiB in all: the
    job's control group stops it; per-process limits alone let every one finish."""
    made: list[Path] = []
    make = Cgroups.job
    monkeypatch.setattr(Cgroups, "job", lambda self, *a: _record(make(self, *a), made))
    grouped = ProcessRuntime(kill_grace_s=0.5, tick_s=0.2)
    per_process = ProcessRuntime(kill_grace_s=0.5, tick_s=0.2, cgroups=False)

    limited = grouped.run(["sh", "-c", _FOUR_HOLDERS], tmp_path / "a", [], 60, {},
                          memory_limit_mb=200)  # fmt: skip
    unlimited = per_process.run(["sh", "-c", _FOUR_HOLDERS], tmp_path / "b", [], 60, {},
                                memory_limit_mb=200)  # fmt: skip

    assert len(list((tmp_path / "a").glob("done.*"))) < 4
    assert "went past its memory limit" in limited.log_tail
    assert len(list((tmp_path / "b").glob("done.*"))) == 4, unlimited.log_tail
    # What the network is told of each (domain/provider.py SANDBOXES), so that a client can
    # see which providers bound a job's memory as a whole.
    assert (grouped.sandbox_name, per_process.sandbox_name) == ("bwrap", "bwrap-rlimits")
    assert len(made) >= 2 and not any(d.exists() for d in made)  # gone with the job


def _record(group: JobCgroup, made: list[Path]) -> JobCgroup:
    made.extend(group.dirs.values())
    return group


@pytest.mark.skipif(detect() is None, reason="no per-job control groups on this machine")
def test_every_process_of_a_job_is_in_its_own_control_group(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    marker = _marker()
    done: list[int | None] = []
    script = f"setsid sleep {marker} & sleep {marker}"
    thread = threading.Thread(
        target=lambda: done.append(runtime.run(["sh", "-c", script], tmp_path, [], 60, {})
                                   .exit_code)
    )
    thread.start()
    try:
        pids = wait_for_host_pids(marker, "sleep")
        while len(pids) < 2:
            pids = wait_for_host_pids(marker, "sleep")
        groups = {Path(f"/proc/{pid}/cgroup").read_text() for pid in pids}
    finally:
        runtime.kill_all()
        thread.join(timeout=10)

    assert len(groups) == 1  # the daemon too
    (lines,) = groups
    assert runtime.cgroups is not None
    kinds = ("",) if runtime.cgroups.version == 2 else ("memory", "pids")
    owned = [line for line in lines.splitlines() if line.split(":")[1] in kinds]
    assert owned and all("/gpgpu-jobs/" in line for line in owned), lines
    assert done == [137]


def _has_cpu_group() -> bool:
    found = detect()
    return found is not None and (found.version == 2 or "cpu" in found.parents)


@pytest.mark.skipif(not _has_cpu_group(), reason="no cpu control group here")
def test_a_jobs_processes_share_one_cpu_quota(tmp_path: Path) -> None:
    """cpus_per_gpu x GPUs is the quota of the job's cpu group, which all its processes
    share (RLIMIT_CPU alone would give each process its own CPU-seconds)."""
    runtime = ProcessRuntime(kill_grace_s=0.5, limits=JobLimits(cpus_per_gpu=0.5))
    assert runtime.cgroups is not None
    marker = _marker()
    thread = threading.Thread(
        target=runtime.run, args=(["sh", "-c", f"sleep {marker} & sleep {marker}"], tmp_path,
                                  [0, 1], 60, {}))  # fmt: skip
    thread.start()
    try:
        pids = wait_for_host_pids(marker, "sleep")
        while len(pids) < 2:
            pids = wait_for_host_pids(marker, "sleep")
        quotas = {_cpu_quota(runtime.cgroups.version, pid) for pid in pids}
    finally:
        runtime.kill_all()
        thread.join(timeout=10)

    assert quotas == {(100_000, 100_000)}  # one CPU's worth: 0.5 x 2 GPUs, for both


def _cpu_quota(version: int, pid: int) -> tuple[int, int]:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    if version == 2:
        (path,) = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
        quota, period = (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max").read_text().split()
        return int(quota), int(period)
    (path,) = [line.split(":", 2)[2] for line in lines if "cpu" in line.split(":")[1].split(",")]
    group = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
    return (int((group / "cpu.cfs_quota_us").read_text()),
            int((group / "cpu.cfs_period_us").read_text()))
