"""The real API app under uvicorn in a thread, for tests that call it over HTTP in-process.

One home for the rig that several API tests used to copy: start the server with its
lifespan (so the services, the projection and the stores are the real ones), wait until it
listens (bounded), and stop it when the block ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from infra.settings import Settings

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@contextmanager
def running_api(settings: Settings) -> Iterator[FastAPI]:
    """create_app(settings), served on settings.api_port until the block ends."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.api_port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT_S)
