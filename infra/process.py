"""Running a service process: signals stop it cleanly, and it exits on purpose.

temporalio sometimes aborts at interpreter exit after the work is done; a
service that finished must not report a crash, so we flush and _exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from infra import tracing


def setup_logging() -> None:
    from infra.logs import configure_logging
    from infra.settings import Settings

    configure_logging(os.environ.get("GPGPU_LOG_LEVEL", "INFO"), Settings().log_format)


def run_service(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    setup_logging()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    code = 0
    try:
        asyncio.run(runner())
    except Exception:
        logging.getLogger(__name__).exception("service failed")
        code = 1
    tracing.shutdown()  # os._exit skips atexit: export the spans still buffered
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
