from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from protocol import digest
from tests.worker_gpu.http_servers import StorageServer
from tests.worker_gpu.processes import host_pids, wait_for_host_pids
from tests.worker_gpu.step_env import StepEnvironment
from worker_gpu import transfer
from worker_gpu.activities import GpuActivities
from worker_gpu.context import StepCancelled, StepFailed
from worker_gpu.runtime_process import ProcessRuntime
from workflows.contracts import (
    ExecuteRequest,
    InputTransfer,
    ManifestEntry,
    OutputTransfer,
    StageRequest,
    StageResult,
    UploadRequest,
)


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path / "scratch"


@pytest.fixture
def acts(scratch: Path) -> GpuActivities:
    return GpuActivities("p1", scratch, ProcessRuntime(kill_grace_s=0.5), gpu_indexes=[0, 1, 2])


@pytest.fixture
def env() -> StepEnvironment:
    return StepEnvironment()


def put_object(storage: StorageServer, name: str, data: bytes) -> InputTransfer:
    (storage.root / name).write_bytes(data)
    return InputTransfer(name=name, url=storage.url(name), digest=b3(data), size=len(data))


# -- stage ------------------------------------------------------------------


def test_stage_fetches_and_verifies_inputs(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer
) -> None:
    big = bytes(range(256)) * 12_000  # about 3 MB: several chunks
    inputs = [put_object(storage, "model.bin", big), put_object(storage, "cfg.json", b"{}")]
    inputs[1].name = "conf/cfg.json"

    result = env.run(acts.stage_inputs, StageRequest("job-1", 1, inputs))

    work = acts.work_dir("job-1", 1)
    assert result == StageResult(files=2, bytes=len(big) + 2)
    assert (work / "model.bin").read_bytes() == big
    assert (work / "conf" / "cfg.json").read_bytes() == b"{}"
    assert sorted(p.name for p in work.rglob("*")) == ["cfg.json", "conf", "model.bin"]
    assert env.heartbeats, "stage must heartbeat"


def test_stage_rejects_a_digest_mismatch_without_leaving_the_file(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer
) -> None:
    transfer = put_object(storage, "data.csv", b"a,b\n1,2\n")
    declared = b3(b"something else")
    transfer.digest = declared

    with pytest.raises(StepFailed) as caught:
        env.run(acts.stage_inputs, StageRequest("job-1", 1, [transfer]))

    err = caught.value
    assert err.type == "InputIntegrityError"
    assert err.non_retryable
    assert "'data.csv'" in err.message
    assert declared in err.message
    assert b3(b"a,b\n1,2\n") in err.message
    assert list(acts.work_dir("job-1", 1).iterdir()) == []


def test_stage_rejects_a_size_mismatch(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer
) -> None:
    transfer = put_object(storage, "data.csv", b"0123456789")
    transfer.size = 4

    with pytest.raises(StepFailed) as caught:
        env.run(acts.stage_inputs, StageRequest("job-1", 1, [transfer]))

    assert caught.value.type == "InputIntegrityError"
    assert "expected blake3:" in caught.value.message and "4 bytes" in caught.value.message
    assert list(acts.work_dir("job-1", 1).iterdir()) == []


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../b", ""])
def test_stage_refuses_names_that_leave_the_job_dir(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer, name: str
) -> None:
    transfer = put_object(storage, "x.txt", b"x")
    transfer.name = name

    with pytest.raises(StepFailed) as caught:
        env.run(acts.stage_inputs, StageRequest("job-1", 1, [transfer]))

    assert (caught.value.type, caught.value.non_retryable) == ("UnsafePathError", True)


def test_stage_refuses_a_job_id_that_is_not_a_name(
    env: StepEnvironment, acts: GpuActivities
) -> None:
    with pytest.raises(StepFailed) as caught:
        env.run(acts.stage_inputs, StageRequest("../../etc", 1, []))

    assert caught.value.type == "UnsafePathError"


def test_stage_reports_a_refused_url_as_non_retryable(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer
) -> None:
    transfer = put_object(storage, "x.txt", b"x")
    storage.fail_status = 403

    with pytest.raises(StepFailed) as caught:
        env.run(acts.stage_inputs, StageRequest("job-1", 1, [transfer]))

    assert caught.value.non_retryable
    assert "403" in caught.value.message and "signature expired" in caught.value.message


def test_stage_retry_keeps_files_already_verified(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer
) -> None:
    transfer = put_object(storage, "x.txt", b"payload")
    env.run(acts.stage_inputs, StageRequest("job-1", 1, [transfer]))
    (storage.root / "x.txt").unlink()  # a second GET would now fail

    result = env.run(acts.stage_inputs, StageRequest("job-1", 1, [transfer]))

    assert result == StageResult(files=1, bytes=7)


# -- execute ----------------------------------------------------------------


def test_execute_returns_exit_code_and_gpu_time(
    env: StepEnvironment, acts: GpuActivities
) -> None:
    script = (
        "import os, sys, time; time.sleep(1.3); "
        "print('gpus', os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(4)"
    )
    request = ExecuteRequest("job-1", 1, ["python3", "-c", script], [0, 2], timeout_s=30)

    result = env.run(acts.execute_job, request)

    assert (result.exit_code, result.timed_out) == (4, False)
    assert result.wall_ms >= 1300
    assert result.gpu_ms == result.wall_ms * 2
    assert result.log_tail == "gpus 0,2\n"
    details = [d[0] for d in env.heartbeats]
    assert details[0] == {"elapsed_s": 0.0, "log_tail": ""}
    assert any(d["elapsed_s"] >= 1.0 for d in details)
    assert acts.busy_gpu_indexes() == set()


def test_execute_reports_a_timeout(env: StepEnvironment, acts: GpuActivities) -> None:
    request = ExecuteRequest("job-1", 1, ["sleep", "30"], [1], timeout_s=1)

    result = env.run(acts.execute_job, request)

    assert (result.exit_code, result.timed_out) == (None, True)
    assert 1000 <= result.gpu_ms < 5000


def test_execute_holds_its_gpus_while_running(
    env: StepEnvironment, acts: GpuActivities
) -> None:
    request = ExecuteRequest("job-1", 1, ["sleep", "1"], [1, 2], timeout_s=30)
    thread = threading.Thread(target=env.run, args=(acts.execute_job, request))
    thread.start()
    time.sleep(0.5)
    busy = acts.busy_gpu_indexes()
    thread.join()

    assert busy == {1, 2}
    assert acts.busy_gpu_indexes() == set()


def test_cancel_kills_the_job(env: StepEnvironment, acts: GpuActivities) -> None:
    marker = f"60.{time.monotonic_ns() % 10**9}"  # its pids inside the sandbox mean nothing here
    request = ExecuteRequest("job-1", 1, ["sleep", marker], [0], 60)
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(env.run(acts.execute_job, request))
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for_host_pids(marker, "sleep")
    started = time.monotonic()
    env.cancel()
    thread.join(timeout=10)

    assert isinstance(outcome[0], StepCancelled)
    assert time.monotonic() - started < 5
    assert host_pids(marker) == []


def test_execute_refuses_gpus_the_provider_does_not_have(
    env: StepEnvironment, acts: GpuActivities
) -> None:
    with pytest.raises(StepFailed) as caught:
        env.run(acts.execute_job, ExecuteRequest("job-1", 1, ["true"], [0, 7], 30))

    assert caught.value.type == "UnknownGpuError"
    assert "[7]" in caught.value.message


# -- upload -----------------------------------------------------------------


def _outputs(storage: StorageServer, *paths: str) -> list[OutputTransfer]:
    return [OutputTransfer(path=p, key=f"out/{p}", url=storage.url(p)) for p in paths]


def test_upload_streams_outputs_with_their_manifest(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer, scratch: Path
) -> None:
    work = acts.work_dir("job-1", 1)
    (work / "res").mkdir(parents=True)
    weights = b"w" * 2_500_000
    (work / "res" / "weights.bin").write_bytes(weights)
    (work / "metrics.json").write_text('{"loss": 0.1}')

    result = env.run(
        acts.upload_outputs,
        UploadRequest("job-1", 1, _outputs(storage, "res/weights.bin", "metrics.json", "nope.txt")),
    )

    assert result.manifest == [
        ManifestEntry("res/weights.bin", "out/res/weights.bin", b3(weights), len(weights)),
        ManifestEntry("metrics.json", "out/metrics.json", b3(b'{"loss": 0.1}'), 13),
    ]
    assert result.missing == ["nope.txt"]
    assert (storage.uploaded / "res" / "weights.bin").read_bytes() == weights
    assert [(p.name, p.digest_header, p.chunked) for p in storage.puts] == [
        ("res/weights.bin", b3(weights), False),
        ("metrics.json", b3(b'{"loss": 0.1}'), False),
    ]
    assert not (scratch / "job-1").exists(), "the attempt's scratch dir must be deleted"


def test_upload_never_follows_a_symlink_out_of_the_job_dir(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer, tmp_path: Path
) -> None:
    secret = tmp_path / "provider-secret.txt"
    secret.write_text("do not leak")
    work = acts.work_dir("job-1", 1)
    work.mkdir(parents=True)
    (work / "result.txt").symlink_to(secret)

    result = env.run(
        acts.upload_outputs, UploadRequest("job-1", 1, _outputs(storage, "result.txt"))
    )

    assert (result.manifest, result.missing) == ([], ["result.txt"])
    assert storage.puts == []


def test_upload_never_takes_a_hard_link_or_a_path_through_a_symlink(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer, tmp_path: Path
) -> None:
    secret = tmp_path / "provider-secret.txt"
    secret.write_text("do not leak")
    work = acts.work_dir("job-1", 1)
    (work / "inside").mkdir(parents=True)
    (work / "inside" / "ok.txt").write_text("fine")
    os.link(secret, work / "linked.txt")  # a second name of a file outside
    (work / "dir").symlink_to(work / "inside")  # stays inside, but a link all the same
    (work / "out").symlink_to(tmp_path)

    result = env.run(acts.upload_outputs, UploadRequest("job-1", 1, _outputs(
        storage, "linked.txt", "dir/ok.txt", "out/provider-secret.txt", "inside/ok.txt")))

    assert [m.path for m in result.manifest] == ["inside/ok.txt"]
    assert result.missing == ["linked.txt", "dir/ok.txt", "out/provider-secret.txt"]
    assert [p.name for p in storage.puts] == ["inside/ok.txt"]
    assert secret.read_text() == "do not leak"


def test_upload_reports_a_refused_put(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer
) -> None:
    work = acts.work_dir("job-1", 1)
    work.mkdir(parents=True)
    (work / "out.txt").write_text("result")
    storage.fail_status = 403

    with pytest.raises(StepFailed) as caught:
        env.run(acts.upload_outputs, UploadRequest("job-1", 1, _outputs(storage, "out.txt")))

    assert "403" in caught.value.message and "signature expired" in caught.value.message
    assert caught.value.non_retryable
    assert (work / "out.txt").exists(), "a failed upload keeps the outputs for a retry"


def test_upload_server_error_is_retryable(
    env: StepEnvironment, acts: GpuActivities, storage: StorageServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfer, "RIDE_OUT_S", 1.0)  # it rides out 60 s of 5xx otherwise
    work = acts.work_dir("job-1", 1)
    work.mkdir(parents=True)
    (work / "out.txt").write_text("result")
    storage.fail_status = 503

    with pytest.raises(StepFailed) as caught:
        env.run(acts.upload_outputs, UploadRequest("job-1", 1, _outputs(storage, "out.txt")))

    assert not caught.value.non_retryable


def test_dishonest_provider_reports_a_wrong_digest(
    env: StepEnvironment, storage: StorageServer, scratch: Path
) -> None:
    liar = GpuActivities("liar", scratch, ProcessRuntime(), corrupt_outputs=True)
    work = liar.work_dir("job-1", 1)
    work.mkdir(parents=True)
    (work / "out.txt").write_text("result")

    result = env.run(liar.upload_outputs, UploadRequest("job-1", 1, _outputs(storage, "out.txt")))

    true_digest = b3(b"result")
    reported = result.manifest[0].digest
    assert reported != true_digest and digest.is_digest(reported)  # well formed, wrong
    assert reported.startswith("blake3:") and reported[8:] == true_digest[8:]
    # What reached storage is honest; only the report lies.
    assert storage.puts[0].body == b"result"
    assert storage.puts[0].digest_header == true_digest
