"""An upload reads no more than the job may hold: each declared output is stat'ed first;
one larger than its grant lets one object be is refused unread, and the outputs' apparent
sizes together are bounded by the job's disk allowance, in the order declared
(worker_gpu/outputs.py; docs/security.md row 23b). Sparse files cost a job nothing on disk,
so without this 256 of `truncate -s 20G` had the agent hash 5 TiB."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.worker_gpu.http_servers import StorageServer
from tests.worker_gpu.step_env import StepEnvironment
from worker_gpu import activities
from worker_gpu.activities import GpuActivities
from worker_gpu.runtime_process import ProcessRuntime
from workflows.contracts import OutputTransfer, UploadRequest

GIB = 1 << 30


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the upload hashed (read whole)."""
    names: list[str] = []
    real = activities.digest_file

    def spy(path: Path, *args: Any, **kwargs: Any) -> tuple[str, int]:
        names.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(activities, "digest_file", spy)
    return names


def _acts(tmp_path: Path, disk_mb: int | None = None) -> GpuActivities:
    acts = GpuActivities("p1", tmp_path / "scratch", ProcessRuntime(kill_grace_s=0.5),
                         gpu_indexes=[0])
    if disk_mb is not None:  # else JobLimits' default
        acts.disk_mb = disk_mb
    return acts


def _output(storage: StorageServer, name: str, most: int | None = None) -> OutputTransfer:
    url = storage.url(name) + ("" if most is None else f"?size={most}&sig=x")
    return OutputTransfer(path=name, key=f"out/{name}", url=url)


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


def test_a_sparse_output_past_the_object_limit_is_refused_unread(
    tmp_path: Path, storage: StorageServer, read: list[str]
) -> None:
    acts = _acts(tmp_path)
    work = acts.work_dir("job-1", 1)
    _sparse(work / "huge.bin", 5 * GIB)  # nothing on disk, 5 GiB to read
    (work / "small.txt").parent.mkdir(parents=True, exist_ok=True)
    (work / "small.txt").write_bytes(b"ok")
    outputs = [_output(storage, "huge.bin", 4 * GIB), _output(storage, "small.txt", 4 * GIB)]

    started = time.monotonic()
    result = StepEnvironment().run(acts.upload_outputs, UploadRequest("job-1", 1, outputs))

    assert time.monotonic() - started < 5
    assert read == ["small.txt"]
    assert [e.path for e in result.manifest] == ["small.txt"]
    assert result.missing == ["huge.bin"]
    assert result.refused["huge.bin"].startswith(
        f"output is {5 * GIB} bytes, larger than {4 * GIB} bytes (the most one object may "
        "hold)")
    assert [p.name for p in storage.puts] == ["small.txt"]


def test_outputs_past_the_disk_allowance_in_all_are_refused_in_declared_order(
    tmp_path: Path, storage: StorageServer, read: list[str]
) -> None:
    acts = _acts(tmp_path, disk_mb=1)
    work = acts.work_dir("job-1", 1)
    work.mkdir(parents=True)
    (work / "a.bin").write_bytes(b"a" * 700_000)
    _sparse(work / "b.bin", 700_000)  # would pass 1 MiB with a.bin
    (work / "c.txt").write_bytes(b"c" * 100)  # still fits
    names = ["a.bin", "b.bin", "c.txt"]

    result = StepEnvironment().run(
        acts.upload_outputs, UploadRequest("job-1", 1, [_output(storage, n) for n in names]))

    assert read == ["a.bin", "c.txt"]
    assert [e.path for e in result.manifest] == ["a.bin", "c.txt"]
    assert result.missing == ["b.bin"]
    assert "past the job's disk allowance of 1048576 bytes" in result.refused["b.bin"]


def test_many_sparse_outputs_cost_no_reading(
    tmp_path: Path, storage: StorageServer, read: list[str]
) -> None:
    """The red team's attack, scaled down in count: 20 GiB sparse files, each within the
    object limit, together far past the allowance."""
    acts = _acts(tmp_path, disk_mb=64)
    work = acts.work_dir("job-1", 1)
    names = [f"o{i}.bin" for i in range(16)]
    for name in names:
        _sparse(work / name, 20 * GIB)
    assert sum(os.stat(work / n).st_blocks for n in names) == 0

    started = time.monotonic()
    result = StepEnvironment().run(
        acts.upload_outputs, UploadRequest("job-1", 1, [_output(storage, n) for n in names]))

    assert time.monotonic() - started < 5
    assert read == [] and storage.puts == []
    assert result.missing == names and sorted(result.refused) == sorted(names)
