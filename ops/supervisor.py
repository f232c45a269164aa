"""`gpgpu up` keeps its children running: one that exits is started again, with back-off.

A provider agent, the control worker or the API that crashes (or is `kill -9`ed) is
restarted after 1 s, then 2, 4, ... up to 30 s while it keeps crashing; a child that ran
for a minute starts again from 1 s. Each exit and each restart is one line on the
console and in the child's own log. The network stops only when asked (Ctrl-C) or
when a child marked `critical` (the Temporal dev server, which every other child needs)
cannot be started again: `poll` then answers why.

Decide, then act: `next_start` is the pure rule (when the next start is due), `poll`
acts on it. State is one `Child` per process, whose `launch` starts it the way it was
first started (for Temporal: until it listens again).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long starts again from FIRST_BACKOFF_S


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    launch: Callable[[], subprocess.Popen[bytes]]  # starts it again, as it was started
    critical: bool = False  # the network cannot run without it
    started_at: float = 0.0  # monotonic
    restarts: int = 0  # in a row, without a stable run between
    due: float | None = None  # when it is to be started again (it exited)


def next_start(now: float, started_at: float, restarts: int) -> tuple[float, int]:
    """When a child that exited at `now` starts again, and its count of restarts in a row."""
    if now - started_at >= STABLE_AFTER_S:
        restarts = 0
    delay = min(FIRST_BACKOFF_S * 2 ** restarts, MAX_BACKOFF_S)
    return now + delay, restarts + 1


class Supervisor:
    def __init__(self, children: list[Child], say: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic):
        self.children = children
        self.say = say
        self.clock = clock

    def note(self, child: Child, line: str, err: bool = False) -> None:
        self.say(line, err=err)
        try:
            with child.log.open("a") as out:
                out.write(f"--- gpgpu up: {line}\n")
        except OSError:
            pass

    def poll(self) -> str | None:
        """One look at every child: note exits, start those due. A reason to stop, or None."""
        now = self.clock()
        for child in self.children:
            if child.due is None:
                code = child.proc.poll()
                if code is None:
                    continue
                child.due, child.restarts = next_start(now, child.started_at, child.restarts)
                self.note(child, f"{child.name} exited with code {code}; starting it again in "
                                 f"{child.due - now:.0f} s (restart {child.restarts}); "
                                 f"see {child.log}", err=True)
            if child.due is not None and now >= child.due:
                try:
                    child.proc = child.launch()
                except Exception as err:  # any failure to start is reported
                    if child.critical:
                        self.note(child, f"{child.name} could not be started again: {err}",
                                  err=True)
                        return f"{child.name} could not be started again: {err}"
                    child.due, child.restarts = next_start(self.clock(), child.started_at,
                                                           child.restarts)
                    self.note(child, f"{child.name} did not start ({err}); trying again in "
                                     f"{child.due - self.clock():.0f} s", err=True)
                    continue
                child.started_at, child.due = self.clock(), None
                self.note(child, f"{child.name} started again (pid {child.proc.pid})")
        return None
