"""Finding a job's processes from outside its sandbox, where its own pids mean nothing."""

from __future__ import annotations

import time
from pathlib import Path


def host_pids(marker: str, program: str | None = None) -> list[int]:
    """Live (not zombie) processes of this machine whose command line contains `marker`
    (and, given `program`, that run it: bwrap's own command line names the job's too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if program is not None and Path(cmdline.split(" ", 1)[0]).name != program:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for_host_pids(marker: str, program: str | None = None,
                       timeout_s: float = 5.0) -> list[int]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        pids = host_pids(marker, program)
        if pids:
            return pids
        time.sleep(0.02)
    raise AssertionError(f"no process with {marker!r} in its command line appeared")
