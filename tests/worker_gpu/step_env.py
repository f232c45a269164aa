"""Run a GPU step (worker_gpu/activities.py) as the agent does: inside a step context."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from worker_gpu.context import StepContext, running

T = TypeVar("T")


class StepEnvironment:
    """Heartbeats the step sent (`heartbeats`, each a 1-tuple of its details) and cancel()."""

    def __init__(self) -> None:
        self.context = StepContext()

    @property
    def heartbeats(self) -> list[tuple[Any]]:
        return [(d,) for d in self.context.heartbeats]

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with running(self.context):
            return fn(*args)

    def cancel(self) -> None:
        self.context.cancel()
