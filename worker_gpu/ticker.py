"""Heartbeat on a timer while the activity's own thread is blocked in I/O."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    """Calls `fn` now and then every `interval_s` on a thread of its own, until exit.

    The thread runs in a copy of the caller's contextvars, which is where
    worker_gpu.context keeps the step's context, so `context.heartbeat` works there.
    A blocked socket read therefore cannot starve the heartbeat; it is bounded
    by the HTTP client's own timeouts instead.
    """

    def __init__(self, interval_s: float, fn: Callable[[], None]) -> None:
        self._interval_s = interval_s
        self._fn = fn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _loop(self) -> None:
        while True:
            try:
                self._fn()
            except Exception as err:
                log.warning("heartbeat failed: %s", err)
                self.error = err
                return
            if self._stop.wait(self._interval_s):
                return

    def __enter__(self) -> Ticker:
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
