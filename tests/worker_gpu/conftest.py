"""Fixtures the agent's tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker_gpu.http_servers import StorageServer


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[StorageServer]:
    """A storage endpoint over `tmp_path/store`, recording uploads in `tmp_path/uploaded`."""
    (tmp_path / "store").mkdir()
    (tmp_path / "uploaded").mkdir()
    with StorageServer(tmp_path / "store", tmp_path / "uploaded") as server:
        yield server
