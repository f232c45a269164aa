"""The API in-process, for tests that call it over HTTP: one home for these rigs.

- `serving(app, port)`: any ASGI app (the whole API, or one router alone) under uvicorn in
  a thread, until the block ends; waits (bounded) until it listens.
- `running_api(settings)`: the real API app with its lifespan (so the services, the
  projection and the stores are the real ones), served on settings.api_port.
- `AsgiApi(settings)`: the real API app with its lifespan entered on an event loop of its
  own thread, called through httpx's ASGI transport: no socket, for tests that send
  thousands of requests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from infra.settings import Settings

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 120.0

T = TypeVar("T")


@contextmanager
def serving(app: FastAPI, port: int, lifespan: bool = True) -> Iterator[str]:
    """`app` under uvicorn on 127.0.0.1:port until the block ends; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning",
                                           lifespan="on" if lifespan else "off"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive(), f"the server on port {port} stopped before it listened"
        assert time.monotonic() < deadline, f"the server on port {port} did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT_S)


@contextmanager
def running_api(settings: Settings) -> Iterator[FastAPI]:
    """create_app(settings), served on settings.api_port until the block ends."""
    app = create_app(settings)
    with serving(app, settings.api_port):
        yield app


class AsgiApi:
    """The API app with its lifespan entered, on an event loop of its own thread."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="api", daemon=True)
        self.thread.start()
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.call(self.lifespan.__aenter__())
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://api.test",
                                        timeout=60)
        self.requests = 0

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=CALL_TIMEOUT_S)

    def request(self, method: str, url: str, token: str | None = None,
                **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.requests += 1
        return self.call(self.client.request(method, url, headers=headers, **kwargs))

    def graphql(self, token: str | None, query: str, **variables: Any) -> httpx.Response:
        # ASCII JSON: a lone surrogate travels as \\ud800, as any JSON encoder may send it.
        body = json.dumps({"query": query, "variables": variables}).encode()
        return self.request("POST", "/graphql", token, content=body,
                            headers={"content-type": "application/json"})

    def notifications(self) -> int:
        """How many events the stores hold: a refusal must leave it as it was."""
        services = self.app.state.services
        return int(services.network.recorder.max_notification_id() or 0)

    def close(self) -> None:
        self.call(self.client.aclose())
        self.call(self.lifespan.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=STOP_TIMEOUT_S)
