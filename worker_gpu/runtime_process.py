"""The local process runtime: a job is a process group on this machine.

This is the embedded default, not a sandbox: it cleans the environment, pins the
GPUs through CUDA_VISIBLE_DEVICES and kills the job's whole process tree, but a
job runs as the agent's user. Hardened isolation is the Docker runtime's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from worker_gpu.runtime import ProgressFn, RunOutcome

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 4096
# A job's log on the provider's disk: past this it keeps only its tail (trim_log), so a job
# that prints without end cannot fill the provider's disk. GPGPU_JOB_LOG_MAX_BYTES sets it.
JOB_LOG_MAX_BYTES = 64 << 20
JOB_LOG_KEPT_BYTES = 1 << 20  # what a trimmed log keeps: its last MiB
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Variables the runtime owns; a job's env cannot override them.
_PINNED = ("HOME", "TMPDIR", "CUDA_VISIBLE_DEVICES", "GPGPU_JOB_DIR")


def job_environment(workdir: Path, gpu_indexes: list[int], env: dict[str, str]) -> dict[str, str]:
    """Only what a job needs: the provider's own variables (credentials included) stay out."""
    result = {
        "PATH": os.environ.get("PATH", DEFAULT_PATH),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    result.update(env)
    result.update(
        HOME=str(workdir),
        TMPDIR=str(workdir / ".tmp"),
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in gpu_indexes),
        GPGPU_JOB_DIR=str(workdir),
    )
    overridden = sorted(k for k in env if k in _PINNED and env[k] != result[k])
    if overridden:
        log.warning("job env may not set %s; ignored", ", ".join(overridden))
    return result


def read_log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            data = f.read(limit)
    except FileNotFoundError:
        return ""
    # A cut in the middle of a UTF-8 character leaves replacement marks at the start.
    return data.decode("utf-8", errors="replace").lstrip("\ufffd")


def job_log_max_bytes() -> int:
    """GPGPU_JOB_LOG_MAX_BYTES, or JOB_LOG_MAX_BYTES; at least twice what a trim keeps."""
    try:
        value = int(os.environ.get("GPGPU_JOB_LOG_MAX_BYTES", JOB_LOG_MAX_BYTES))
    except ValueError:
        value = JOB_LOG_MAX_BYTES
    return min(max(value, 2 * JOB_LOG_KEPT_BYTES), 1 << 40)


def trim_log(path: Path, max_bytes: int, keep: int = JOB_LOG_KEPT_BYTES) -> int:
    """Past max_bytes, the log keeps its last `keep` bytes after a line saying how many went;
    the bytes cut (0: none). The job writes with O_APPEND, so what it writes next lands
    after the kept tail (a line written while the trim runs may be lost with the rest)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size <= max_bytes:
        return 0
    with path.open("r+b") as f:
        f.seek(size - keep)
        tail = f.read(keep)
        cut = size - len(tail)
        f.seek(0)
        f.write(f"gpgpu: the log passed {max_bytes} bytes; {cut} earlier bytes were "
                f"dropped, its tail is kept\n".encode() + tail)
        f.truncate()
    return cut


def open_job_log(path: Path) -> BinaryIO:
    """An empty log the job appends to (O_APPEND, so trim_log can shorten it under the job)."""
    path.write_bytes(b"")
    return path.open("ab")


def _address_space_limit(memory_limit_mb: int) -> Callable[[], None]:
    limit = memory_limit_mb * 1024 * 1024

    def apply() -> None:
        # Runs in the child between fork and exec; it only makes one system call,
        # which is why it is safe even though the agent has threads.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, sig)


def _exit_code(returncode: int) -> int:
    # A job killed by a signal reads as the shell and Docker report it (SIGKILL: 137).
    return 128 - returncode if returncode < 0 else returncode


class ProcessRuntime:
    def __init__(self, kill_grace_s: float = 3.0, tick_s: float = 1.0,
                 log_max_bytes: int | None = None) -> None:
        self._kill_grace_s = kill_grace_s
        self._tick_s = tick_s
        self._log_max_bytes = log_max_bytes or job_log_max_bytes()
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen[bytes]] = {}

    def run(
        self,
        command: list[str],
        workdir: Path,
        gpu_indexes: list[int],
        timeout_s: int,
        env: dict[str, str],
        on_progress: ProgressFn | None = None,
        cancel_event: threading.Event | None = None,
        *,
        log_path: Path | None = None,
        memory_limit_mb: int | None = None,
    ) -> RunOutcome:
        """Run `command` in `workdir` until it exits, times out or is cancelled.

        memory_limit_mb caps the address space (RLIMIT_AS). CUDA reserves far more
        address space than it uses, so leave it unset for CUDA jobs.
        """
        if not command:
            raise ValueError("empty command")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / ".tmp").mkdir(exist_ok=True)
        log_path = log_path or workdir / "job.log"
        started = time.monotonic()

        def wall_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        with open_job_log(log_path) as log_file:
            try:
                proc = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=job_environment(workdir, gpu_indexes, env),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, so the tree dies together
                    preexec_fn=_address_space_limit(memory_limit_mb) if memory_limit_mb else None,
                )
            except OSError as err:
                # What a shell would answer: 127 not found, 126 not executable.
                log_file.write(f"cannot start {command[0]!r}: {err.strerror}\n".encode())
                log_file.flush()
                code = 127 if isinstance(err, FileNotFoundError) else 126
                return RunOutcome(code, False, wall_ms(), read_log_tail(log_path))

        with self._lock:
            self._running[proc.pid] = proc
        try:
            stopped = self._wait(proc, started + timeout_s, log_path, on_progress, cancel_event)
        finally:
            self._finish(proc)
            with self._lock:
                self._running.pop(proc.pid, None)
        tail = read_log_tail(log_path)
        if stopped:
            timed_out = not (cancel_event is not None and cancel_event.is_set())
            return RunOutcome(None, timed_out, wall_ms(), tail)
        assert proc.returncode is not None
        return RunOutcome(_exit_code(proc.returncode), False, wall_ms(), tail)

    def kill_all(self) -> None:
        with self._lock:
            pids = list(self._running)
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)

    def _wait(
        self,
        proc: subprocess.Popen[bytes],
        deadline: float,
        log_path: Path,
        on_progress: ProgressFn | None,
        cancel_event: threading.Event | None,
    ) -> bool:
        """Wait for the job; True when it had to be stopped (timeout or cancel)."""
        started = time.monotonic()
        next_tick = started + self._tick_s
        while not self._leader_exited(proc, timeout=min(next_tick, deadline) - time.monotonic()):
            now = time.monotonic()
            if (cancel_event is not None and cancel_event.is_set()) or now >= deadline:
                self._stop(proc)
                return True
            if now >= next_tick:
                next_tick = now + self._tick_s
                trim_log(log_path, self._log_max_bytes)
                if on_progress is not None:
                    on_progress(now - started, read_log_tail(log_path))
        return False

    def _leader_exited(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """Poll without reaping: while the leader is an unreaped zombie its pid, which is
        also the group id, cannot be reused, so killing the group cannot hit a stranger."""
        end = time.monotonic() + max(0.0, timeout)
        while True:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.02)

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        self._leader_exited(proc, timeout=self._kill_grace_s)

    def _finish(self, proc: subprocess.Popen[bytes]) -> None:
        # Whatever the job left behind in its group (daemons, background children)
        # must not outlive it on a GPU that is about to be handed to someone else.
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_group_gone(proc.pid, timeout_s=self._kill_grace_s)


def _group_has_live_members(pgid: int) -> bool:
    """Any process of group `pgid` still running? Zombies do not count: in a container
    nobody may reap them, and they hold no GPU memory."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: nothing to look at, so do not wait
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    # SIGKILL is delivered asynchronously: return once the tree is really gone, so
    # that the next job on these GPUs finds their memory free.
    end = time.monotonic() + timeout_s
    try:
        os.killpg(pgid, 0)  # no process left in the group: done, without scanning /proc
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    while _group_has_live_members(pgid):
        if time.monotonic() >= end:
            log.warning("processes of job group %d still running after SIGKILL", pgid)
            return
        time.sleep(0.02)
