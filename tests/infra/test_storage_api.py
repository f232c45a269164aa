"""The API's presigned storage URLs (our HMAC) over each backend: how providers move files."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.storage import router
from infra.devstack import free_port
from infra.signing import presigned_url
from tests.infra.conftest import StoreFactory

pytestmark = pytest.mark.timeout(900)

SECRET = b"k" * 32
MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def api(make_store: StoreFactory) -> Iterator[str]:
    """The storage router alone, served by uvicorn over a store with a 30 MiB quota."""
    app = FastAPI()
    app.include_router(router)
    settings = SimpleNamespace(signing_secret=SECRET, max_object_bytes=64 * MiB)
    app.state.services = SimpleNamespace(settings=settings, store=make_store(30 * MiB))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def url(base: str, method: str, key: str) -> str:
    return presigned_url(SECRET, base, method, "alice", key, int(time.time()) + 60)


def test_a_provider_puts_and_gets_through_presigned_urls(api: str) -> None:
    data = os.urandom(20 * MiB)

    def body() -> Iterator[bytes]:
        for i in range(0, len(data), MiB):
            yield data[i : i + MiB]

    put = httpx.put(url(api, "PUT", "out/result.bin"), content=body(),
                    headers={"X-Sha256": sha(data)}, timeout=60)  # fmt: skip
    assert put.status_code == 200, put.text
    assert put.json() == {"key": "out/result.bin", "sha256": sha(data), "size": 20 * MiB}
    got = httpx.get(url(api, "GET", "out/result.bin"), timeout=60)
    assert got.status_code == 200
    assert got.headers["X-Sha256"] == sha(data)
    assert got.content == data


def test_the_api_reports_refusals_in_the_stores_words(api: str) -> None:
    bad = httpx.put(url(api, "PUT", "bad.bin"), content=b"abc", headers={"X-Sha256": "0" * 64})
    assert bad.status_code == 400
    assert bad.json()["detail"].startswith(
        f"bad.bin: sha256 of the bytes received is {sha(b'abc')}"
    )
    assert httpx.get(url(api, "GET", "bad.bin")).status_code == 404

    big = httpx.put(url(api, "PUT", "big.bin"), content=bytes(31 * MiB), timeout=60)
    assert big.status_code in (400, 413)
    assert "alice's storage quota is 31457280 bytes, 0 bytes are in use" in big.json()["detail"]
    assert httpx.get(url(api, "GET", "big.bin")).status_code == 404
