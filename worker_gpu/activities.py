"""The GPU-side steps a provider runs for its assignments: stage, execute, upload.

They are synchronous and run in the agent's thread pool, inside a step context
(worker_gpu/context.py): they heartbeat through it and poll its is_cancelled() at
every heartbeat, and stop cleanly themselves (nothing is ever thrown into their
thread between "kill the job" and "reap it").
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import httpx

from worker_gpu import checkpoint, context
from worker_gpu.context import StepCancelled, StepFailed
from worker_gpu.joblog import LogFollower, read_log_tail
from worker_gpu.outputs import choose_outputs
from worker_gpu.runtime import JobRuntime, ProgressFn, RunOutcome
from worker_gpu.runtime_docker import WORKDIR as CONTAINER_WORKDIR
from worker_gpu.runtime_docker import DockerRuntime, EngineUnavailable, ImageUnavailable
from worker_gpu.runtime_process import ProcessRuntime
from worker_gpu.sandbox import JobLimits
from worker_gpu.ticker import Ticker
from worker_gpu.transfer import (
    ChunkFn,
    HttpFailure,
    IntegrityMismatch,
    UnsafePath,
    already_present,
    digest_file,
    download_verified,
    ride_out,
    safe_path,
    tls,
    upload_file,
)
from workflows.contracts_gpu import (
    MAX_REFUSAL_CHARS,
    ExecuteRequest,
    ExecuteResult,
    InputTransfer,
    ManifestEntry,
    StageRequest,
    StageResult,
    UploadRequest,
    UploadResult,
)

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
# Storage answers that refuse an output for what it is (its size, the client's quota),
# which no retry and no other provider changes.
STORE_REFUSED = (400, 413)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@dataclass
class _Progress:
    """What a transfer heartbeat reports; written by the activity thread, read by the ticker."""

    files_done: int = 0
    bytes: int = 0
    current: str = ""

    def details(self) -> dict[str, object]:
        return {"files_done": self.files_done, "bytes": self.bytes, "current": self.current}


def _non_retryable(message: str, type_: str) -> StepFailed:
    return StepFailed(message, type=type_, non_retryable=True)


def _http_error(err: HttpFailure, what: str) -> StepFailed:
    return StepFailed(
        f"{what}: {err}", type=f"{err.method.title()}Failed", non_retryable=not err.retryable
    )


def _lie_about(digest: str) -> str:
    # One hex digit off: the smallest lie a verifier must still catch.
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:" + ("1" if hexpart[0] == "0" else "0") + hexpart[1:]


class GpuActivities:
    """Stage, execute and upload for one provider; the agent runs them for its assignments.

    corrupt_outputs=True makes this a DISHONEST provider that reports a wrong
    digest for every output; it exists only to test verification.
    """

    def __init__(
        self,
        provider_id: str,
        scratch_root: Path,
        runtime: JobRuntime,
        *,
        gpu_indexes: list[int] | None = None,
        memory_limit_mb: int | None = None,
        corrupt_outputs: bool = False,
        wrong_results: bool = False,
        disk_mb: int = JobLimits.disk_mb,
    ) -> None:
        self.provider_id = provider_id
        self.scratch_root = scratch_root
        self._runtime = runtime
        self._gpu_indexes = set(gpu_indexes) if gpu_indexes is not None else None
        self._memory_limit_mb = memory_limit_mb
        self.corrupt_outputs = corrupt_outputs
        self.wrong_results = wrong_results
        self.disk_mb = disk_mb  # the job's disk allowance: its outputs' apparent sizes in all
        self._busy_lock = threading.Lock()
        self._busy: dict[int, int] = {}  # GPU index -> number of jobs holding it

    # -- paths -------------------------------------------------------------

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        if not _SAFE_ID.match(job_id):
            raise _non_retryable(f"job id {job_id!r} cannot name a directory", "UnsafePathError")
        return self.scratch_root / job_id / str(int(attempt))

    def work_dir(self, job_id: str, attempt: int) -> Path:
        return self.attempt_dir(job_id, attempt) / "work"

    # -- GPU occupancy, for honest simulated telemetry ----------------------

    def busy_gpu_indexes(self) -> set[int]:
        with self._busy_lock:
            return set(self._busy)

    @contextmanager
    def _holding(self, gpu_indexes: list[int]) -> Iterator[None]:
        with self._busy_lock:
            for i in gpu_indexes:
                self._busy[i] = self._busy.get(i, 0) + 1
        try:
            yield
        finally:
            with self._busy_lock:
                for i in gpu_indexes:
                    self._busy[i] -= 1
                    if not self._busy[i]:
                        del self._busy[i]

    # -- activities ----------------------------------------------------------

    def stage_inputs(self, request: StageRequest) -> StageResult:
        work = self.work_dir(request.job_id, request.attempt)
        work.mkdir(parents=True, exist_ok=True)
        progress = _Progress()
        with (
            httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=True, verify=tls()) as client,
            Ticker(HEARTBEAT_S, lambda: context.heartbeat(progress.details())) as ticker,
        ):

            def on_chunk(n: int) -> None:
                progress.bytes += n
                _raise_if_cancelled(ticker)

            for transfer in request.inputs:
                progress.current = transfer.name
                target = _job_path(work, transfer.name)
                if already_present(target, transfer.digest, transfer.size):
                    progress.bytes += transfer.size
                else:
                    try:
                        fetch = partial(_fetch, client, transfer, target, on_chunk, progress,
                                        progress.bytes)
                        ride_out(fetch, f"fetching input {transfer.name!r}",
                                 check=lambda: _raise_if_cancelled(ticker))
                    except IntegrityMismatch as err:
                        raise _non_retryable(str(err), "InputIntegrityError") from None
                    except HttpFailure as err:
                        raise _http_error(err, f"fetching input {transfer.name!r}") from None
                progress.files_done += 1
        log.info(
            "job %s: staged %d files, %d bytes", request.job_id, len(request.inputs), progress.bytes
        )
        return StageResult(files=len(request.inputs), bytes=progress.bytes)

    def execute_job(self, request: ExecuteRequest) -> ExecuteResult:
        if self._gpu_indexes is not None:
            unknown = sorted(set(request.gpu_indexes) - self._gpu_indexes)
            if unknown:
                raise _non_retryable(
                    f"GPU indexes {unknown} are not on provider {self.provider_id}",
                    "UnknownGpuError",
                )
        work = self.work_dir(request.job_id, request.attempt)
        work.mkdir(parents=True, exist_ok=True)
        (work / checkpoint.CHECKPOINT_DIR).mkdir(exist_ok=True)
        # The job's own checkpoints (worker_gpu/checkpoint.py) go here; an earlier attempt's
        # were staged here as inputs.
        where = self._checkpoint_dir(work, request)
        request = replace(request, env={**request.env, checkpoint.ENV_VAR: where})
        cancel = threading.Event()
        # The job's output as it comes, for its live log (sent with the heartbeats).
        log_path = self.attempt_dir(request.job_id, request.attempt) / "job.log"
        log_path.unlink(missing_ok=True)  # an earlier try's: the runtime starts it afresh
        follower = LogFollower(log_path)

        def on_progress(elapsed_s: float, log_tail: str) -> None:
            try:
                context.heartbeat({"elapsed_s": round(elapsed_s, 1), "log_tail": log_tail})
                context.log(follower.read())
            except Exception as err:
                # The heartbeat is how cancellation arrives: without it we cannot be told to stop.
                log.warning("job %s: heartbeat failed (%s); stopping it", request.job_id, err)
                cancel.set()
            if context.is_cancelled():
                cancel.set()

        on_progress(0.0, "")
        log.info(
            "job %s: running %s on GPUs %s", request.job_id, request.command, request.gpu_indexes
        )
        uploader = None
        if request.checkpoint is not None:
            uploader = checkpoint.CheckpointUploader(
                request.checkpoint, work, job_id=request.job_id, attempt=request.attempt
            ).start()
        try:
            with self._holding(request.gpu_indexes):
                outcome = self._run(request, work, on_progress, cancel)
        finally:
            if uploader is not None:
                uploader.stop()
        outcome = self._note_checkpoints(request, uploader, outcome)
        context.log(follower.read(final=True))
        if cancel.is_set():
            raise StepCancelled(f"job {request.job_id} was cancelled; its processes were killed")
        log.info(
            "job %s: exit %s, timed out %s, %d ms",
            request.job_id,
            outcome.exit_code,
            outcome.timed_out,
            outcome.wall_ms,
        )
        return ExecuteResult(
            exit_code=outcome.exit_code,
            timed_out=outcome.timed_out,
            wall_ms=outcome.wall_ms,
            gpu_ms=outcome.wall_ms * len(request.gpu_indexes),
            log_tail=outcome.log_tail,
        )

    def _checkpoint_dir(self, work: Path, request: ExecuteRequest) -> str:
        """Where the job sees its checkpoint directory (GPGPU_CHECKPOINT_DIR)."""
        if request.image:
            return f"{CONTAINER_WORKDIR}/{checkpoint.CHECKPOINT_DIR}"
        if isinstance(self._runtime, ProcessRuntime):  # /work in its sandbox
            return f"{self._runtime.job_path(work)}/{checkpoint.CHECKPOINT_DIR}"
        return str((work / checkpoint.CHECKPOINT_DIR).resolve())

    def _note_checkpoints(
        self,
        request: ExecuteRequest,
        uploader: checkpoint.CheckpointUploader | None,
        outcome: RunOutcome,
    ) -> RunOutcome:
        """Tell the job's log where its checkpoint came from and what could not be uploaded.

        Written once the job has stopped: its own output goes to the log through a file
        offset of its own, which would overwrite lines appended while it runs.
        """
        plan = request.checkpoint
        notes = [checkpoint.resumed_note(plan)] if plan is not None and plan.resumed else []
        notes += uploader.notes if uploader is not None else []
        if not notes:
            return outcome
        log_path = self.attempt_dir(request.job_id, request.attempt) / "job.log"
        with log_path.open("a", encoding="utf-8") as f:
            f.writelines(f"gpgpu: {note}\n" for note in notes)
        return outcome._replace(log_tail=read_log_tail(log_path))

    def _run(
        self,
        request: ExecuteRequest,
        work: Path,
        on_progress: ProgressFn,
        cancel: threading.Event,
    ) -> RunOutcome:
        # The job log stays outside the work dir, where the job cannot replace it.
        log_path = self.attempt_dir(request.job_id, request.attempt) / "job.log"
        args = (request.command, work, request.gpu_indexes, request.timeout_s, request.env)
        if not isinstance(self._runtime, DockerRuntime):
            if request.image:
                raise _non_retryable(
                    f"job asks for container image {request.image!r}, but provider "
                    f"{self.provider_id} has no docker runtime",
                    "RuntimeUnavailableError",
                )
            if isinstance(self._runtime, ProcessRuntime):
                return self._runtime.run(*args, on_progress, cancel, log_path=log_path,
                                         memory_limit_mb=self._memory_limit_mb,
                                         network=request.network)  # fmt: skip
            return self._runtime.run(
                *args, on_progress, cancel, log_path=log_path, memory_limit_mb=self._memory_limit_mb
            )
        if not request.image:
            raise _non_retryable(
                f"provider {self.provider_id} runs jobs only in containers; the job names no image",
                "ImageRequiredError",
            )
        try:
            return self._runtime.run(
                *args,
                on_progress,
                cancel,
                log_path=log_path,
                memory_limit_mb=self._memory_limit_mb,
                image=request.image,
                network=request.network,
                job_id=request.job_id,
            )
        except ImageUnavailable as err:
            raise _non_retryable(str(err), "ImageUnavailableError") from None
        except EngineUnavailable as err:
            raise StepFailed(str(err), type="ContainerEngineError") from None

    def upload_outputs(self, request: UploadRequest) -> UploadResult:
        work = self.work_dir(request.job_id, request.attempt)
        manifest: list[ManifestEntry] = []
        # Stat'ed and bounded before any is read (worker_gpu/outputs.py).
        choice = choose_outputs(work, request.outputs, self.disk_mb * 2**20)
        missing, refused = choice.missing, choice.refused
        progress = _Progress()
        with (
            httpx.Client(timeout=HTTP_TIMEOUT, verify=tls()) as client,
            Ticker(HEARTBEAT_S, lambda: context.heartbeat(progress.details())) as ticker,
        ):

            def on_chunk(n: int) -> None:
                progress.bytes += n
                _raise_if_cancelled(ticker)

            for chosen in choice.chosen:
                output, path = chosen.output, chosen.path
                progress.current = output.path
                if self.wrong_results:  # a cheat that covers its tracks: storage will agree
                    with path.open("ab") as f:
                        f.write(b"\n0.4242 (not what the job computed)\n")
                digest, size = digest_file(path, on_chunk)
                put = partial(_put, client, output.url, path, digest, size, on_chunk, progress,
                              progress.bytes)
                try:
                    ride_out(put, f"uploading output {output.path!r}",
                             check=lambda: _raise_if_cancelled(ticker))
                except HttpFailure as err:
                    if err.status not in STORE_REFUSED:
                        raise _http_error(err, f"uploading output {output.path!r}") from None
                    # The store refused the object itself (larger than one object may be,
                    # past the client's quota): the job's doing, not this provider's. It is
                    # missing, and the run is judged and paid like any run with missing
                    # outputs; the client is told the store's answer.
                    log.warning("output %r refused by storage: %s", output.path, err)
                    missing.append(output.path)
                    refused[output.path] = str(err)[:MAX_REFUSAL_CHARS]
                    continue
                reported = _lie_about(digest) if self.corrupt_outputs else digest
                manifest.append(ManifestEntry(output.path, output.key, reported, size))
                progress.files_done += 1
        self._remove_attempt(request.job_id, request.attempt)
        log.info(
            "job %s: uploaded %d outputs, %d missing", request.job_id, len(manifest), len(missing)
        )
        return UploadResult(manifest=manifest, missing=missing, refused=refused)

    def _remove_attempt(self, job_id: str, attempt: int) -> None:
        attempt_dir = self.attempt_dir(job_id, attempt)
        shutil.rmtree(attempt_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the job's folder goes once no attempt is left
            attempt_dir.parent.rmdir()


def _fetch(client: httpx.Client, transfer: InputTransfer, target: Path, on_chunk: ChunkFn,
           progress: _Progress, bytes_before: int) -> int:
    progress.bytes = bytes_before  # each try starts the file over
    return download_verified(client, transfer.url, target, name=transfer.name,
                             digest=transfer.digest, size=transfer.size, on_chunk=on_chunk)


def _put(client: httpx.Client, url: str, path: Path, digest: str, size: int, on_chunk: ChunkFn,
         progress: _Progress, bytes_before: int) -> None:
    progress.bytes = bytes_before
    upload_file(client, url, path, digest=digest, size=size, on_chunk=on_chunk)


def _raise_if_cancelled(ticker: Ticker) -> None:
    if context.is_cancelled():
        raise StepCancelled("activity cancelled")
    if ticker.error is not None:
        raise StepCancelled(f"heartbeat failed ({ticker.error}); stopping")


def _job_path(work: Path, name: str) -> Path:
    try:
        return safe_path(work, name)
    except UnsafePath as err:
        raise _non_retryable(str(err), "UnsafePathError") from None
