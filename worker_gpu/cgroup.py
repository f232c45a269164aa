"""Per-job control groups: a sandboxed job's memory and processes, counted for the whole job.

The sandbox's prlimit(1) limits (worker_gpu/sandbox.py `prlimit_args`) bound each process
of a job, so a job of n processes could hold n times its memory. Where the agent may make
control groups (as root, with cgroup v2's memory and pids controllers, or cgroup v1's
memory and pids hierarchies mounted writable), each sandboxed job starts inside control
groups of its own, under the agent's own (so whatever limits the agent's machine or
service manager set still hold): its memory (page cache, its tmpfs /tmp and /dev/shm, and
swap where the kernel accounts it, all included) and its processes are limited for the
job as a whole, and the kernel stops the job when it goes past. bwrap's cgroup namespace
then shows the job its own group as the root, and the job's user cannot write there.

Where no control group can be made (not root, a container without cgroup rights), `detect`
returns None: the agent says so when it starts, and the per-process limits alone hold.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MOUNT = Path("/sys/fs/cgroup")
PARENT = "gpgpu-jobs"
V1_CONTROLLERS = ("memory", "pids")  # needed; "cpu" is used where it can be
CFS_PERIOD_US = 100_000
# Joins the job's groups, then becomes bwrap: the job's first process is in them before
# it can fork, and keeps its pid (the process group the runtime signals).
_ENTER = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || '
    '{ echo "gpgpu: cannot enter the job\'s control group" >&2; exit 125; }; '
    'shift; n=$((n - 1)); done; exec "$@"'
)
_REMOVE_WAIT_S = 2.0


@dataclass(frozen=True)
class Cgroups:
    """Where this agent makes its jobs' control groups: cgroup v2 (one parent directory,
    controller "") or v1 (one per controller: memory, pids, and cpu where it may)."""

    version: int
    parents: dict[str, Path]  # controller -> the parent of the jobs' groups

    def job(self, memory_bytes: int | None, pids: int, cpus: float | None = None) -> JobCgroup:
        """The control groups of one job, made now with its limits; close() removes them.
        cpus: CPUs' worth of time the job may use at once (where the cpu controller is)."""
        name = f"{os.getpid()}-{uuid.uuid4().hex}"  # the agent's pid: see `sweep`
        group = JobCgroup(self.version, {})
        try:
            for controller, parent in self.parents.items():
                (parent / name).mkdir()
                group.dirs[controller] = parent / name
            group.limit(memory_bytes, pids, cpus)
        except OSError:
            group.close()
            raise
        return group

    def sweep(self) -> None:
        """Remove the groups that agents no longer running left behind (one killed before
        it could close them), and kill what is left in them."""
        for controller, parent in self.parents.items():
            for group in parent.iterdir():
                pid, _, rest = group.name.partition("-")
                if group.is_dir() and rest and pid.isdigit() and not _alive(int(pid)):
                    JobCgroup(self.version, {controller: group}).close()

    def describe(self) -> str:
        return f"cgroup v{self.version}: {', '.join(self.parents) or 'memory, pids, cpu'}"


@dataclass
class JobCgroup:
    version: int
    dirs: dict[str, Path]  # as Cgroups.parents

    def limit(self, memory_bytes: int | None, pids: int, cpus: float | None) -> None:
        quota = None if cpus is None else max(1000, int(cpus * CFS_PERIOD_US))
        if self.version == 2:
            group = self.dirs[""]
            if memory_bytes is not None:
                _write(group / "memory.max", memory_bytes)
                _write_if_present(group / "memory.swap.max", 0)
            _write(group / "pids.max", pids)
            if quota is not None:
                _write_if_present(group / "cpu.max", f"{quota} {CFS_PERIOD_US}")
            return
        if memory_bytes is not None:
            _write(self.dirs["memory"] / "memory.limit_in_bytes", memory_bytes)
            # With swap accounting on, memory and swap together: the job cannot swap past it.
            _write_if_present(self.dirs["memory"] / "memory.memsw.limit_in_bytes", memory_bytes)
        _write(self.dirs["pids"] / "pids.max", pids)
        if quota is not None and "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", CFS_PERIOD_US)
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", quota)

    def enter(self, argv: list[str]) -> list[str]:
        """argv, started so that its first process is in this job's groups."""
        procs = [str(d / "cgroup.procs") for d in self.dirs.values()]
        return ["/bin/sh", "-c", _ENTER, "gpgpu-cgroup", str(len(procs)), *procs, *argv]

    def oom_kills(self) -> int:
        """How many of the job's processes the kernel killed for going past its memory."""
        memory = self.dirs["" if self.version == 2 else "memory"]
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            lines = (memory / name).read_text().splitlines()
        except OSError:
            return 0
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def close(self) -> None:
        """Kill whatever is left in the job's groups and remove them (bounded wait)."""
        deadline = time.monotonic() + _REMOVE_WAIT_S
        for group in self.dirs.values():
            while True:
                for pid in _members(group):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        log.warning("control group %s still busy; left in place", group)
                        break
                    time.sleep(0.02)


def detect(mount: Path = MOUNT, self_cgroup: Path = Path("/proc/self/cgroup")) -> Cgroups | None:
    """This machine's way to make per-job control groups, or None where there is none."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    own = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path.lstrip("/")
    try:
        found = _v2(mount, own.get("", "")) if (mount / "cgroup.controllers").is_file() \
            else _v1(mount, own)  # fmt: skip
        if found is not None:
            found.sweep()
        return found
    except OSError as err:
        log.info("no per-job control groups here: %s", err)
        return None


def _v2(mount: Path, own: str) -> Cgroups | None:
    # Under the agent's own group where it may delegate, else at the top (root's own).
    for base in dict.fromkeys([mount / own, mount]):
        offered = set((base / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= offered:
            continue
        wanted = " ".join(f"+{c}" for c in ("memory", "pids", "cpu") if c in offered)
        parent = base / PARENT
        parent.mkdir(exist_ok=True)
        try:
            _write(base / "cgroup.subtree_control", wanted)
            _write(parent / "cgroup.subtree_control", wanted)
        except OSError:
            with contextlib.suppress(OSError):
                parent.rmdir()
            continue
        return Cgroups(2, {"": parent})
    return None


def _v1(mount: Path, own: dict[str, str]) -> Cgroups | None:
    parents = {}
    for controller in (*V1_CONTROLLERS, "cpu"):
        hierarchy = mount / controller
        if not (hierarchy / "cgroup.procs").is_file() or controller not in own:
            if controller == "cpu":
                continue  # CPU time stays limited per process (RLIMIT_CPU) alone
            return None
        parent = hierarchy / own[controller] / PARENT
        try:
            parent.mkdir(exist_ok=True)
        except OSError:
            if controller == "cpu":
                continue
            raise
        if controller == "memory":
            _write_if_present(parent / "memory.use_hierarchy", 1)
        parents[controller] = parent
    return Cgroups(1, parents)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _members(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _write(path: Path, value: int | str) -> None:
    path.write_text(f"{value}\n")


def _write_if_present(path: Path, value: int | str) -> None:
    if path.exists():
        with contextlib.suppress(OSError):
            _write(path, value)
