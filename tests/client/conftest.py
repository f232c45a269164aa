from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.client.fake_api import TOKEN, FakeApi


@pytest.fixture(autouse=True)
def signed_in(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every call carries alice's key; no credentials file of the machine's user is read."""
    monkeypatch.setenv("GPGPU_API_KEY", TOKEN)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    fake.start_ws()
    try:
        yield fake
    finally:
        fake.stop_ws()


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens: a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
