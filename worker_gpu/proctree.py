"""A job's process tree on this machine: signalling its process group, and waiting until
every process of it is gone (the process runtime, worker_gpu/runtime_process.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, sig)


def open_init(init_pid: int | None, bwrap_pid: int) -> int | None:
    """A pidfd of the sandbox's PID 1, checked to be bwrap's child (so a reused pid is
    never signalled)."""
    if init_pid is None:
        return None
    try:
        pidfd = os.pidfd_open(init_pid)
    except OSError:
        return None  # already gone and reaped: nothing of it is left to kill
    try:
        stat = Path(f"/proc/{init_pid}/stat").read_text()
        parent = int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        parent = -1
    if parent != bwrap_pid:
        os.close(pidfd)
        return None
    return pidfd


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


def wait_group_gone(pgid: int, timeout_s: float) -> None:
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
