"""What the execute activity needs from a runtime (local process today, Docker later)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

# Called about once a second while the job runs, with seconds elapsed and the log's tail.
ProgressFn = Callable[[float, str], None]


class RunOutcome(NamedTuple):
    exit_code: int | None  # None when the job was killed (timeout or cancel)
    timed_out: bool
    wall_ms: int
    log_tail: str


class JobRuntime(Protocol):
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
    ) -> RunOutcome: ...

    def kill_all(self) -> None:
        """Kill every job still running; the agent calls it on its way out."""
        ...
