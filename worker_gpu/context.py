"""The step a GPU-side function is running for: its heartbeat and its cancel flag.

The agent runs each assignment (stage, execute, upload) in a thread with a `StepContext`
installed; the step calls `heartbeat(details)` as it goes and checks `is_cancelled()`.
The agent's own context sends the latest details to the API, whose answer is how a cancel
arrives (worker_gpu/agent.py). `StepFailed` and `StepCancelled` are how a step ends
other than with its result. The agent imports nothing of Temporal: this is its own.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StepFailed(Exception):
    """The step failed; `type` names why, `non_retryable` says that trying again is useless."""

    def __init__(self, message: str, type: str = "ProviderError", non_retryable: bool = False):
        super().__init__(message)
        self.message, self.type, self.non_retryable = message, type, non_retryable


class StepCancelled(Exception):
    """The step stopped because it was cancelled (or its heartbeat could not be delivered)."""


class StepContext:
    """Heartbeats kept in memory and a cancel flag; the agent's context also sends them."""

    def __init__(self) -> None:
        self.heartbeats: list[Any] = []
        self.logged: list[Any] = []
        self._cancelled = threading.Event()
        self._lock = threading.Lock()

    def heartbeat(self, details: Any = None) -> None:
        with self._lock:
            self.heartbeats.append(details)
            del self.heartbeats[:-100]  # the last ones are what matter

    def log(self, chunks: list[Any]) -> None:
        """New output of the job (joblog.LogChunk); kept here, sent by the agent's context."""
        with self._lock:
            self.logged.extend(chunks)
            del self.logged[:-1000]

    def cancel(self) -> None:
        self._cancelled.set()

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()


_current: contextvars.ContextVar[StepContext] = contextvars.ContextVar("gpgpu_step")


@contextmanager
def running(context: StepContext) -> Iterator[StepContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current() -> StepContext:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("not running a step: use worker_gpu.context.running()") from None


def heartbeat(details: Any = None) -> None:
    current().heartbeat(details)


def log(chunks: list[Any]) -> None:
    if chunks:
        current().log(chunks)


def is_cancelled() -> bool:
    return current().is_cancelled()
