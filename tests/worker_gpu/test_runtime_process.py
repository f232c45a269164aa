from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from worker_gpu.runtime_process import LOG_TAIL_BYTES, ProcessRuntime


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped (PID 1 in a container may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_file(path: Path, timeout_s: float = 5.0) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def runtime() -> ProcessRuntime:
    return ProcessRuntime(kill_grace_s=0.5, tick_s=0.2)


def test_exit_code_and_log_tail(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = "import sys; print('x' * 10000); print('last line'); sys.exit(3)"

    exit_code, timed_out, wall_ms, tail = runtime.run(
        [sys.executable, "-c", script], tmp_path, [0], timeout_s=30, env={}
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


def test_timeout_kills_the_whole_process_group(runtime: ProcessRuntime, tmp_path: Path) -> None:
    # A child of a child, ignoring SIGTERM: only SIGKILL to the group stops it.
    script = "trap '' TERM; sh -c 'echo $$ > grandchild.pid; sleep 60'; sleep 60"
    started = time.monotonic()

    outcome = runtime.run(["bash", "-c", script], tmp_path, [0], timeout_s=1, env={})

    grandchild = int(_wait_for_file(tmp_path / "grandchild.pid"))
    assert (outcome.exit_code, outcome.timed_out) == (None, True)
    assert time.monotonic() - started < 5
    assert not _alive(grandchild)


def test_background_children_do_not_outlive_the_job(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    outcome = runtime.run(
        ["bash", "-c", "sleep 60 & echo $! > bg.pid; exit 0"], tmp_path, [], 30, {}
    )

    assert outcome.exit_code == 0
    assert not _alive(int((tmp_path / "bg.pid").read_text()))


def test_cancel_event_stops_the_job(runtime: ProcessRuntime, tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()

    outcome = runtime.run(["sleep", "60"], tmp_path, [], 60, {}, cancel_event=cancel)

    assert (outcome.exit_code, outcome.timed_out) == (None, False)
    assert outcome.wall_ms < 5000


def test_environment_is_cleaned_and_gpus_pinned(
    runtime: ProcessRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_X", "provider-credential")
    job_env = {"FOO": "bar", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}

    outcome = runtime.run(["env"], tmp_path, [0, 2], 30, job_env)

    env = dict(line.split("=", 1) for line in outcome.log_tail.splitlines())
    assert "SECRET_X" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert env["HOME"] == str(tmp_path)
    assert env["GPGPU_JOB_DIR"] == str(tmp_path)
    assert env["TMPDIR"] == str(tmp_path / ".tmp")
    assert (tmp_path / ".tmp").is_dir()
    assert env["FOO"] == "bar"
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "CUDA_VISIBLE_DEVICES"} | {
        "GPGPU_JOB_DIR",
        "FOO",
        "PWD",  # some env(1) builds add it
    }


def test_runs_in_the_work_dir(runtime: ProcessRuntime, tmp_path: Path) -> None:
    outcome = runtime.run(["pwd"], tmp_path / "work", [], 30, {})

    assert outcome.log_tail.strip() == str(tmp_path / "work")


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


def test_memory_limit_caps_the_address_space(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = "b = bytearray(512 * 1024 * 1024)"

    limited = runtime.run([sys.executable, "-c", script], tmp_path, [], 30, {}, memory_limit_mb=200)
    unlimited = runtime.run([sys.executable, "-c", script], tmp_path, [], 30, {})

    assert limited.exit_code == 1
    assert "MemoryError" in limited.log_tail
    assert unlimited.exit_code == 0


def test_kill_all_stops_running_jobs(runtime: ProcessRuntime, tmp_path: Path) -> None:
    result: list[int | None] = []
    thread = threading.Thread(
        target=lambda: result.append(runtime.run(["sleep", "60"], tmp_path, [], 60, {}).exit_code)
    )
    thread.start()
    time.sleep(0.3)

    runtime.kill_all()
    thread.join(timeout=5)

    assert result == [137]
    assert os.listdir(tmp_path)  # the log is there
