"""The checkpoint uploader against a real HTTP server: what goes up, in which order, when."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from protocol import digest
from tests.worker_gpu.http_servers import StorageServer
from tests.worker_gpu.step_env import StepEnvironment
from worker_gpu.activities import GpuActivities
from worker_gpu.checkpoint import CheckpointUploader
from worker_gpu.runtime_process import ProcessRuntime
from workflows.contracts import CheckpointPlan, ExecuteRequest, ManifestEntry, OutputTransfer

JOB = "job-1"


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "work" / "checkpoint").mkdir(parents=True)
    return tmp_path / "work"


def make_plan(storage: StorageServer, *, max_files: int = 4, max_bytes: int = 1 << 20,
              interval_s: float = 0.1, resumed: list[ManifestEntry] | None = None,
              attempt: int = 1) -> CheckpointPlan:
    slots = [
        OutputTransfer(str(n), f"jobs/{JOB}/checkpoint/{attempt}/{n}",
                       storage.url(f"slots/{attempt}/{n}"))
        for n in range(2 * max_files)
    ]
    return CheckpointPlan(f"jobs/{JOB}/checkpoint.json", storage.url("checkpoint.json"), slots,
                          max_bytes, max_files, interval_s, resumed or [])


def manifest(storage: StorageServer) -> dict[str, Any]:
    return json.loads((storage.uploaded / "checkpoint.json").read_bytes())


def write(path: Path, data: bytes) -> None:
    """As the convention asks: a temporary name starting with '.', renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def test_nothing_is_uploaded_until_the_job_writes_a_checkpoint(
    storage: StorageServer, work: Path
) -> None:
    uploader = CheckpointUploader(make_plan(storage), work, job_id=JOB, attempt=1)
    assert uploader.poll() is False
    (work / "checkpoint").rmdir()
    assert uploader.poll() is False
    assert storage.puts == []


def test_files_go_up_first_and_the_manifest_last(storage: StorageServer, work: Path) -> None:
    write(work / "checkpoint" / "step.txt", b"3\n")
    write(work / "checkpoint" / "state" / "weights.bin", b"w" * 5000)
    uploader = CheckpointUploader(make_plan(storage), work, job_id=JOB, attempt=1)

    assert uploader.poll() is True

    names = [p.name for p in storage.puts]
    assert names[-1] == "checkpoint.json" and len(names) == 3
    assert sorted(names[:-1]) == ["slots/1/0", "slots/1/1"]
    doc = manifest(storage)
    assert doc["job_id"] == JOB and doc["attempt"] == 1
    files = {f["path"]: f for f in doc["files"]}
    assert set(files) == {"step.txt", "state/weights.bin"}
    step = files["step.txt"]
    assert (step["digest"], step["size"]) == (b3(b"3\n"), 2)
    slot = step["key"].rsplit("/", 1)[1]
    assert (storage.uploaded / "slots" / "1" / slot).read_bytes() == b"3\n"
    # Every PUT announced its digest, so storage refuses a file torn while it was read.
    assert all(p.digest_header == b3(p.body) for p in storage.puts)


def test_only_a_change_is_uploaded_and_never_over_the_last_checkpoint(
    storage: StorageServer, work: Path
) -> None:
    write(work / "checkpoint" / "step.txt", b"1\n")
    write(work / "checkpoint" / "big.bin", b"b" * 1000)
    uploader = CheckpointUploader(make_plan(storage), work, job_id=JOB, attempt=1)
    assert uploader.poll() is True
    first = {f["path"]: f["key"] for f in manifest(storage)["files"]}
    storage.puts.clear()

    assert uploader.poll() is False  # nothing changed
    os.utime(work / "checkpoint" / "step.txt")  # touched, same bytes
    assert uploader.poll() is False
    assert storage.puts == []

    write(work / "checkpoint" / "step.txt", b"2\n")
    assert uploader.poll() is True
    assert [p.name for p in storage.puts][-1] == "checkpoint.json"
    assert len(storage.puts) == 2  # big.bin did not change: not sent again
    second = {f["path"]: f["key"] for f in manifest(storage)["files"]}
    assert second["big.bin"] == first["big.bin"]
    assert second["step.txt"] not in first.values()  # a free slot, not one the last named
    storage.puts.clear()

    (work / "checkpoint" / "big.bin").unlink()
    assert uploader.poll() is True
    assert [p.name for p in storage.puts] == ["checkpoint.json"]
    assert [f["path"] for f in manifest(storage)["files"]] == ["step.txt"]


def test_temporary_files_and_links_out_of_the_job_dir_stay_behind(
    storage: StorageServer, work: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "provider-secret.txt"
    secret.write_bytes(b"provider's own file")
    (work / "checkpoint" / ".step.txt.tmp").write_bytes(b"half written")
    (work / "checkpoint" / "leak.txt").symlink_to(secret)
    (work / "checkpoint" / "linked").symlink_to(tmp_path, target_is_directory=True)
    write(work / "checkpoint" / "step.txt", b"4\n")
    uploader = CheckpointUploader(make_plan(storage), work, job_id=JOB, attempt=1)

    assert uploader.poll() is True

    assert [f["path"] for f in manifest(storage)["files"]] == ["step.txt"]
    assert all(b"provider's own" not in p.body for p in storage.puts)


def test_a_checkpoint_over_the_limits_is_not_uploaded_and_says_why(
    storage: StorageServer, work: Path
) -> None:
    write(work / "checkpoint" / "huge.bin", b"x" * 2048)
    uploader = CheckpointUploader(make_plan(storage, max_bytes=1024), work, job_id=JOB)
    assert uploader.poll() is False
    assert uploader.poll() is False
    assert storage.puts == []
    assert uploader.notes == [
        "checkpoint not uploaded: checkpoint/ holds 2.0 KiB, more than the 1.0 KiB allowed "
        "(GPGPU_CHECKPOINT_MAX_BYTES)"
    ]

    (work / "checkpoint" / "huge.bin").unlink()
    for n in range(3):
        write(work / "checkpoint" / f"{n}.txt", b"n")
    few = CheckpointUploader(make_plan(storage, max_files=2), work, job_id=JOB)
    assert few.poll() is False
    assert "3 files, more than the 2 allowed" in few.notes[0]


def test_a_resumed_checkpoint_is_not_sent_again(storage: StorageServer, work: Path) -> None:
    """The files staged from the last attempt are already in storage, under their keys."""
    write(work / "checkpoint" / "step.txt", b"5\n")
    staged = [ManifestEntry("step.txt", f"jobs/{JOB}/checkpoint/1/0", b3(b"5\n"), 2)]
    plan = make_plan(storage, resumed=staged, attempt=2)
    uploader = CheckpointUploader(plan, work, job_id=JOB, attempt=2)
    assert uploader.poll() is False
    assert storage.puts == []

    write(work / "checkpoint" / "step.txt", b"6\n")
    assert uploader.poll() is True
    assert [p.name for p in storage.puts] == ["slots/2/0", "checkpoint.json"]


def test_a_refused_upload_writes_no_manifest_and_is_tried_again(
    storage: StorageServer, work: Path
) -> None:
    write(work / "checkpoint" / "step.txt", b"7\n")
    uploader = CheckpointUploader(make_plan(storage), work, job_id=JOB)
    storage.fail_status = 403
    assert uploader.poll() is False
    assert not (storage.uploaded / "checkpoint.json").exists()
    storage.fail_status = None
    assert uploader.poll() is True
    assert manifest(storage)["files"][0]["digest"] == b3(b"7\n")


def test_the_thread_uploads_while_the_job_runs(storage: StorageServer, work: Path) -> None:
    with CheckpointUploader(make_plan(storage), work, job_id=JOB) as uploader:
        write(work / "checkpoint" / "step.txt", b"1\n")
        deadline = time.monotonic() + 10
        while uploader.uploads < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        write(work / "checkpoint" / "step.txt", b"2\n")
        while uploader.uploads < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert uploader.uploads == 2
    assert manifest(storage)["files"][0]["digest"] == b3(b"2\n")


# -- within execute_job ---------------------------------------------------------


def test_execute_uploads_the_jobs_checkpoint_and_logs_what_it_could_not(
    storage: StorageServer, tmp_path: Path
) -> None:
    acts = GpuActivities("p1", tmp_path / "scratch", ProcessRuntime(kill_grace_s=0.5),
                         gpu_indexes=[0])
    script = (
        "import os, pathlib, time\n"
        "d = pathlib.Path(os.environ['GPGPU_CHECKPOINT_DIR'])\n"
        "print('resuming from', (d / 'step.txt').read_text().strip(), flush=True)\n"
        "(d / 'step.txt').write_text('9')\n"
        "time.sleep(1.5)\n"
        "(d / 'huge.bin').write_bytes(b'x' * 5000)\n"
        "time.sleep(1.0)\n"
    )
    work = acts.work_dir(JOB, 2)
    write(work / "checkpoint" / "step.txt", b"8\n")  # as staged from attempt 1
    staged = [ManifestEntry("step.txt", f"jobs/{JOB}/checkpoint/1/0", b3(b"8\n"), 2)]
    plan = make_plan(storage, max_bytes=4096, interval_s=0.2, resumed=staged, attempt=2)
    plan.resumed_from_attempt = 1
    request = ExecuteRequest(JOB, 2, ["python3", "-c", script], [0], 30,
                             env={"GPGPU_CHECKPOINT_DIR": "/elsewhere"}, checkpoint=plan)

    result = StepEnvironment().run(acts.execute_job, request)

    assert result.exit_code == 0, result.log_tail
    assert "resuming from 8" in result.log_tail
    assert "gpgpu: started from the checkpoint of attempt 1 (1 file, 2 B)" in result.log_tail
    assert "gpgpu: checkpoint not uploaded: checkpoint/ holds 4.9 KiB" in result.log_tail
    doc = manifest(storage)
    assert [(f["path"], f["digest"]) for f in doc["files"]] == [("step.txt", b3(b"9"))]
    assert doc["attempt"] == 2
