"""The local process runtime: a job is a process tree on this machine, in a sandbox.

By default every job runs inside bubblewrap (worker_gpu/sandbox.py): its own namespaces,
uid nobody, a read-only system, its work directory at /work as the only writable path,
limits on processes, memory, CPU time and disk, and no process left once it ends. With
unsafe_no_sandbox (the agent's --unsafe-no-sandbox) it is a plain process group of the
agent's user, with a cleaned environment: for machines where bubblewrap cannot run, and
the network shows such a provider as unsandboxed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from worker_gpu.cgroup import Cgroups, JobCgroup, detect
from worker_gpu.joblog import job_log_max_bytes, open_job_log, read_log_tail, trim_log
from worker_gpu.proctree import open_init, signal_group, wait_group_gone
from worker_gpu.runtime import ProgressFn, RunOutcome

if TYPE_CHECKING:
    from worker_gpu.discovery import GpuInfo
from worker_gpu.sandbox import (
    INSIDE_PATH,
    INSIDE_WORKDIR,
    NOBODY,
    Bwrap,
    JobLimits,
    disk_usage,
    give,
    prlimit_args,
    read_info,
)

log = logging.getLogger(__name__)

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


def _address_space_limit(memory_limit_mb: int) -> Callable[[], None]:
    limit = memory_limit_mb * 1024 * 1024

    def apply() -> None:
        # Runs in the child between fork and exec; it only makes one system call,
        # which is why it is safe even though the agent has threads.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _exit_code(returncode: int) -> int:
    # A job killed by a signal reads as the shell and Docker report it (SIGKILL: 137).
    return 128 - returncode if returncode < 0 else returncode


BWRAP_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def sandbox_environment(
    gpu_indexes: list[int], env: dict[str, str], uuids: list[str] | None = None
) -> dict[str, str]:
    """The job's whole environment inside the sandbox (bwrap starts from an empty one).
    Real GPUs are named by UUID: the sandbox holds only their device nodes, so CUDA's own
    numbering inside need not match the machine's indexes."""
    result = {"PATH": INSIDE_PATH, "LANG": "C.UTF-8"}
    result.update(env)
    result.update(
        HOME=INSIDE_WORKDIR,
        TMPDIR="/tmp",
        CUDA_VISIBLE_DEVICES=",".join(uuids if uuids else [str(i) for i in gpu_indexes]),
        GPGPU_JOB_DIR=INSIDE_WORKDIR,
    )
    overridden = sorted(k for k in env if k in _PINNED and env[k] != result[k])
    if overridden:
        log.warning("job env may not set %s; ignored", ", ".join(overridden))
    return result


class _Job:
    """One running job: bwrap (or the job itself, unsandboxed) and the sandbox's PID 1."""

    def __init__(self, proc: subprocess.Popen[bytes], init_pidfd: int | None,
                 group: JobCgroup | None = None) -> None:  # fmt: skip
        self.proc = proc
        self.init_pidfd = init_pidfd
        self.group = group
        self.out_of_memory = False

    def kill(self) -> None:
        """SIGKILL the sandbox's PID 1 (the kernel then kills its whole PID namespace) and
        bwrap's process group; without a sandbox, the job's process group."""
        if self.init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
        signal_group(self.proc.pid, signal.SIGKILL)

    def wait_sandbox_gone(self, timeout_s: float) -> bool:
        """True once the sandbox's PID 1 has exited, which the kernel allows only after
        every other process of its namespace is gone."""
        if self.init_pidfd is None:
            return True
        readable, _, _ = select.select([self.init_pidfd], [], [], timeout_s)
        return bool(readable)

    def close(self) -> None:
        if self.init_pidfd is not None:
            os.close(self.init_pidfd)
            self.init_pidfd = None
        if self.group is not None:
            self.out_of_memory = self.group.oom_kills() > 0
            self.group.close()  # and whatever was left in it is killed
            self.group = None


class ProcessRuntime:
    """Jobs as processes of this machine, each in a bubblewrap sandbox unless
    unsafe_no_sandbox. Raises SandboxUnavailable when bubblewrap is missing (and the
    sandbox was not turned off)."""

    def __init__(
        self,
        kill_grace_s: float = 3.0,
        tick_s: float = 1.0,
        *,
        limits: JobLimits | None = None,
        allow_network: bool = False,
        unsafe_no_sandbox: bool = False,
        bwrap: Bwrap | None = None,
        log_max_bytes: int | None = None,
        gpus: list[GpuInfo] | None = None,
        cgroups: Cgroups | bool | None = True,
    ) -> None:
        self._kill_grace_s = kill_grace_s
        self._tick_s = tick_s
        self._log_max_bytes = log_max_bytes or job_log_max_bytes()
        self.limits = limits or JobLimits()
        self.allow_network = allow_network
        self.sandbox = None if unsafe_no_sandbox else (bwrap or Bwrap())
        # Per-job memory and process limits (worker_gpu/cgroup.py), where this machine has
        # them: True finds them, None or False goes without (per-process limits only).
        found = detect() if cgroups is True else cgroups or None
        self.cgroups = found if self.sandbox is not None else None
        # The machine's real GPUs by index: a sandbox gets the device nodes of its job's own.
        self.devices = {g.index: g for g in gpus or [] if g.minor is not None}
        self._lock = threading.Lock()
        self._running: dict[int, _Job] = {}

    @property
    def sandbox_name(self) -> str:
        """What the network is told: "bwrap" (each job in control groups of its own),
        "bwrap-rlimits" (no control groups could be made: per-process limits alone), or
        "none" for an unsandboxed runtime."""
        if self.sandbox is None:
            return "none"
        return "bwrap" if self.cgroups else "bwrap-rlimits"

    def job_path(self, workdir: Path) -> str:
        """Where the job sees its work directory."""
        return INSIDE_WORKDIR if self.sandbox is not None else str(workdir.resolve())

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
        network: bool = False,
    ) -> RunOutcome:
        """Run `command` in `workdir` until it exits, times out or is cancelled.

        memory_limit_mb replaces the per-GPU memory limit of the runtime's limits (per
        process: the address space, or the data size where CUDA devices are present; and
        for the whole job where the runtime has control groups).
        network: the job asks for one; it gets the host's only when allow_network.
        """
        if not command:
            raise ValueError("empty command")
        workdir.mkdir(parents=True, exist_ok=True)
        workdir = workdir.resolve()
        log_path = log_path or workdir / "job.log"
        started = time.monotonic()

        def wall_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        lent = False
        with open_job_log(log_path) as log_file:
            if network and not self.allow_network:
                log_file.write(
                    b"gpgpu: the job asked for network access, which this provider does "
                    b"not allow; it runs without a network\n"
                )
                log_file.flush()
            try:
                if self.sandbox is not None and self.sandbox.drop_to_nobody:
                    give(workdir, NOBODY, NOBODY)  # lent to the sandbox's user for the run
                    lent = True
                job = self._start(command, workdir, gpu_indexes, timeout_s, env, log_file,
                                  memory_limit_mb, network and self.allow_network)  # fmt: skip
            except OSError as err:
                if lent:
                    give(workdir, os.geteuid(), os.getegid())
                # What a shell would answer: 127 not found, 126 not executable.
                log_file.write(f"cannot start {command[0]!r}: {err.strerror}\n".encode())
                log_file.flush()
                code = 127 if isinstance(err, FileNotFoundError) else 126
                return RunOutcome(code, False, wall_ms(), read_log_tail(log_path))

            try:
                stopped, full = self._wait(job, workdir, started + timeout_s, log_path,
                                           on_progress, cancel_event)  # fmt: skip
            finally:
                self._finish(job)
                with self._lock:
                    self._running.pop(job.proc.pid, None)
                if lent:
                    give(workdir, os.geteuid(), os.getegid())
            if not full and self.sandbox is not None:
                full = disk_usage(workdir) > self.limits.disk_mb * 2**20
            if full:
                log_file.write(
                    f"gpgpu: the job's work directory grew past {self.limits.disk_mb} MiB; "
                    "the job was stopped\n".encode()
                )
            if job.out_of_memory:
                log_file.write(b"gpgpu: the job went past its memory limit; the kernel "
                               b"stopped it\n")  # fmt: skip
        tail = read_log_tail(log_path)
        if full:
            return RunOutcome(137, False, wall_ms(), tail)
        if stopped:
            timed_out = not (cancel_event is not None and cancel_event.is_set())
            return RunOutcome(None, timed_out, wall_ms(), tail)
        returncode = job.proc.returncode
        assert returncode is not None
        return RunOutcome(_exit_code(returncode), False, wall_ms(), tail)

    def _start(
        self, command: list[str], workdir: Path, gpu_indexes: list[int], timeout_s: int,
        env: dict[str, str], log_file: IO[bytes], memory_limit_mb: int | None, network: bool,
    ) -> _Job:
        if self.sandbox is None:
            (workdir / ".tmp").mkdir(exist_ok=True)
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
            job = _Job(proc, None)
            with self._lock:
                self._running[proc.pid] = job
            return job
        limited = prlimit_args(self.limits, len(gpu_indexes), timeout_s, memory_limit_mb,
                               gpu_devices=bool(self.sandbox.devices))  # fmt: skip
        info_read, info_write = os.pipe()
        own = [self.devices[i] for i in gpu_indexes if i in self.devices]
        launch = self.sandbox.command(
            workdir, info_write, [*limited, *command],
            sandbox_environment(gpu_indexes, env, [g.uuid for g in own]),
            network=network, tmp_mb=self.limits.tmp_mb,
            gpu_minors=[g.minor for g in own if g.minor is not None],
        )
        memory = self.limits.memory_bytes(len(gpu_indexes), memory_limit_mb)
        cpus = self.limits.cpus(len(gpu_indexes))
        group = self.cgroups.job(memory, self.limits.pids, cpus) if self.cgroups else None
        try:
            proc = subprocess.Popen(
                group.enter(launch.argv) if group else launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(info_write, *launch.fds),
                # Not the agent's: bwrap's own PID 1 in the sandbox keeps the environment
                # bwrap was started with, and the job can read /proc/1/environ.
                env=BWRAP_ENV,
            )
        except BaseException:
            if group is not None:
                group.close()
            raise
        finally:
            launch.close()
            os.close(info_write)
        job = _Job(proc, None, group)
        with self._lock:  # from now on kill_all reaches it (bwrap's group, then its PID 1)
            self._running[proc.pid] = job
        try:
            init_pid = read_info(info_read)
        finally:
            os.close(info_read)
        job.init_pidfd = open_init(init_pid, proc.pid)
        return job

    def kill_all(self) -> None:
        with self._lock:
            jobs = list(self._running.values())
        for job in jobs:
            job.kill()

    def _wait(
        self,
        job: _Job,
        workdir: Path,
        deadline: float,
        log_path: Path,
        on_progress: ProgressFn | None,
        cancel_event: threading.Event | None,
    ) -> tuple[bool, bool]:
        """Wait for the job: (stopped, full). stopped: it had to be stopped (timeout or
        cancel); full: its work directory went past the disk limit, and it was stopped."""
        proc = job.proc
        started = time.monotonic()
        next_tick = started + self._tick_s
        limit = self.limits.disk_mb * 2**20
        while not self._leader_exited(proc, timeout=min(next_tick, deadline) - time.monotonic()):
            now = time.monotonic()
            if (cancel_event is not None and cancel_event.is_set()) or now >= deadline:
                self._stop(job)
                return True, False
            if now >= next_tick:
                next_tick = now + self._tick_s
                trim_log(log_path, self._log_max_bytes)
                if self.sandbox is not None and disk_usage(workdir) > limit:
                    self._stop(job)
                    return False, True
                if on_progress is not None:
                    on_progress(now - started, read_log_tail(log_path))
        return False, False

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

    def _stop(self, job: _Job) -> None:
        if self.sandbox is not None:
            job.kill()  # at once: a sandbox is one unit, and a cancel must free the GPUs now
            return
        signal_group(job.proc.pid, signal.SIGTERM)
        self._leader_exited(job.proc, timeout=self._kill_grace_s)

    def _finish(self, job: _Job) -> None:
        # Whatever the job left behind (daemons, background children) must not outlive it
        # on a GPU that is about to be handed to someone else.
        job.kill()
        job.proc.wait()
        try:
            if not job.wait_sandbox_gone(self._kill_grace_s):
                log.warning("sandbox of job process %d still running after SIGKILL", job.proc.pid)
        finally:
            job.close()
        wait_group_gone(job.proc.pid, timeout_s=self._kill_grace_s)
