"""The Docker runtime: a job is a hardened container of the image it names.

The container sees the job's work dir at /work and nothing else of the provider:
its root filesystem is read-only (scratch: /work and a tmpfs /tmp), it runs as
nobody with every capability dropped and no-new-privileges, has no network
unless the job asks and the provider allows it, and is held to memory, CPU and
pid limits. It is labelled with the job and provider, killed on timeout or
cancel, and always removed; a crashed agent's leftovers go at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import docker.types
import requests

from worker_gpu.joblog import job_log_max_bytes, open_job_log, read_log_tail, trim_log
from worker_gpu.runtime import ProgressFn, RunOutcome
from worker_gpu.sandbox import disk_usage
from worker_gpu.sandbox import give as _give

log = logging.getLogger(__name__)

LABEL_JOB = "gpgpu.job_id"
LABEL_PROVIDER = "gpgpu.provider_id"
WORKDIR = "/work"
NOBODY = "65534:65534"
_NOBODY_ID = 65534
# The engine may record the kernel's OOM kill a moment after the exit (cgroup v2 reports
# them apart): a run killed (137) and not yet marked is looked at again for this long.
OOM_SETTLE_S = 1.0
# Variables the runtime owns; a job's env cannot override them. NVIDIA_VISIBLE_DEVICES
# is pinned too: CUDA images set it to "all", which on an engine whose default
# runtime is nvidia would hand the job every GPU of the machine.
_PINNED = ("HOME", "TMPDIR", "GPGPU_JOB_DIR", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


class ImageUnavailable(Exception):
    """The job's image is not on this machine; trying again here will not change that."""


class EngineUnavailable(Exception):
    """The Docker engine did not answer, or refused what the job needs."""


@dataclass(frozen=True)
class ContainerLimits:
    """What one container may use; a job gets one share of memory and CPUs per GPU it holds."""

    memory_mb_per_gpu: int
    cpus_per_gpu: float
    pids: int = 4096
    # The work dir (bind-mounted, so the engine's storage options do not apply): any one
    # file by RLIMIT_FSIZE, the whole checked while the job runs, on every storage driver.
    disk_mb: int = 20 * 1024

    @classmethod
    def machine_share(
        cls,
        gpus: int,
        memory_mb_per_gpu: int | None = None,
        cpus_per_gpu: float | None = None,
        pids: int = 4096,
        disk_mb: int = 20 * 1024,
    ) -> ContainerLimits:
        """Defaults: the machine's memory (less 10% for the agent and system) and CPUs split
        evenly between its GPUs, so that jobs running side by side cannot starve each other."""
        gpus = max(1, gpus)
        if memory_mb_per_gpu is None:
            total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
            memory_mb_per_gpu = max(256, int(total_mb * 0.9) // gpus)
        if cpus_per_gpu is None:
            cpus_per_gpu = max(0.5, (os.cpu_count() or 1) / gpus)
        return cls(memory_mb_per_gpu, cpus_per_gpu, pids, disk_mb)

    def memory_mb(self, gpus: int) -> int:
        return self.memory_mb_per_gpu * max(1, gpus)

    def nano_cpus(self, gpus: int) -> int:
        return int(self.cpus_per_gpu * max(1, gpus) * 1e9)


def container_environment(
    gpu_indexes: list[int], env: dict[str, str], *, gpu_devices: bool
) -> dict[str, str]:
    """The job's env inside the container. The provider's own variables stay out, as in the
    process runtime; PATH is the image's own unless the job sets one, since the host's
    directories mean nothing inside the image."""
    if gpu_devices:
        # The engine passes only the assigned GPUs, and CUDA numbers them from 0 inside.
        cuda = ",".join(str(i) for i in range(len(gpu_indexes)))
        nvidia = ",".join(str(i) for i in gpu_indexes) or "void"
    else:
        # Simulated GPUs: no device is passed; the job sees the indexes it was assigned.
        cuda = ",".join(str(i) for i in gpu_indexes)
        nvidia = "void"
    result = {"LANG": os.environ.get("LANG", "C.UTF-8")}
    result.update(env)
    result.update(
        HOME=WORKDIR,
        TMPDIR="/tmp",
        GPGPU_JOB_DIR=WORKDIR,
        CUDA_VISIBLE_DEVICES=cuda,
        NVIDIA_VISIBLE_DEVICES=nvidia,
    )
    overridden = sorted(k for k in env if k in _PINNED and env[k] != result[k])
    if overridden:
        log.warning("job env may not set %s; ignored", ", ".join(overridden))
    return result


def _pump(stream: Any, log_file: IO[bytes]) -> None:
    with contextlib.suppress(Exception):  # the stream breaks when the container goes
        for chunk in stream:
            log_file.write(chunk)
            log_file.flush()


def _start_failure(err: docker.errors.APIError) -> int | None:
    """What a shell would answer when the command cannot start: 127 not found, 126 not
    executable; None when the engine failed for another reason."""
    text = str(err.explanation or err)
    if "exec:" not in text and "exec format" not in text:
        return None  # a mount, device or engine failure, not the job's command
    if "not found" in text or "no such file or directory" in text:
        return 127
    return 126


class DockerRuntime:
    """Jobs as containers on the engine `docker.from_env()` finds (DOCKER_HOST)."""

    def __init__(
        self,
        provider_id: str,
        limits: ContainerLimits,
        *,
        client: docker.DockerClient | None = None,
        gpu_devices: bool = True,
        job_network: str | None = None,
        tick_s: float = 1.0,
        poll_s: float = 0.1,
    ) -> None:
        """gpu_devices: pass the assigned GPUs to the container (False for simulated GPUs:
        there is no device to pass). job_network: the engine network for jobs that ask
        for one; None means no job ever gets a network."""
        self.provider_id = provider_id
        self.limits = limits
        self.gpu_devices = gpu_devices
        self.job_network = job_network
        self._client = client or connect()
        self._tick_s = tick_s
        self._poll_s = poll_s
        self._log_max_bytes = job_log_max_bytes()
        self._lock = threading.Lock()
        self._running: dict[str, Any] = {}  # container id -> Container

    def sweep(self) -> list[str]:
        """Remove this provider's containers left by an agent that crashed; their names."""
        try:
            found = self._client.containers.list(
                all=True, filters={"label": f"{LABEL_PROVIDER}={self.provider_id}"}
            )
            for container in found:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True, v=True)
        except (docker.errors.DockerException, requests.RequestException) as err:
            raise EngineUnavailable(f"could not remove leftover containers: {err}") from None
        return [c.name for c in found]

    def run(
        self,
        command: list[str],
        workdir: Path,
        gpu_indexes: list[int],
        timeout_s: int,
        env: dict[str, str],
        on_progress: ProgressFn | None = None,
        cancel_event: threading.Event | None = None,
        *,
        log_path: Path | None = None,
        memory_limit_mb: int | None = None,
        image: str | None = None,
        network: bool = False,
        job_id: str | None = None,
    ) -> RunOutcome:
        """Run `command` in `image` with `workdir` at /work until it exits, times out or is
        cancelled. memory_limit_mb, when given, replaces the per-GPU memory share."""
        if not command:
            raise ValueError("empty command")
        if not image:
            raise ValueError("the docker runtime runs a job only in a container image")
        self._require_image(image)
        workdir.mkdir(parents=True, exist_ok=True)
        workdir = workdir.resolve()
        log_path = log_path or workdir / "job.log"
        started = time.monotonic()

        def wall_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        # As root the agent lends the work dir to nobody for the run and takes it back
        # after; an agent that is not root runs the job as itself (still not root).
        as_root = os.geteuid() == 0
        user = NOBODY if as_root else f"{os.getuid()}:{os.getgid()}"
        with_network = network and self.job_network is not None
        with open_job_log(log_path) as log_file:
            if network and not with_network:
                log_file.write(
                    b"gpgpu: the job asked for network access, which this provider does "
                    b"not allow; it runs without a network\n"
                )
                log_file.flush()
            if as_root:
                _give(workdir, _NOBODY_ID, _NOBODY_ID)
            try:
                container = self._create(
                    image, command, workdir, gpu_indexes, env, user, job_id,
                    memory_limit_mb, with_network,
                )  # fmt: skip
                try:
                    state = self._start_and_wait(
                        container, command, log_file, log_path,
                        started + timeout_s, on_progress, cancel_event, workdir,
                    )  # fmt: skip
                finally:
                    self._remove(container)
            except requests.RequestException as err:
                # The SDK wraps HTTP errors only: an engine that went away shows up here.
                raise EngineUnavailable(f"lost the Docker engine: {err}") from None
            finally:
                if as_root:
                    _give(workdir, os.geteuid(), os.getegid())
            if state is not None and state.get("Status") == "full":
                log_file.write(f"gpgpu: the job's work directory grew past "
                               f"{self.limits.disk_mb} MiB; the job was stopped\n".encode())
            if state is not None and state.get("OOMKilled"):
                memory_mb = self._memory_mb(gpu_indexes, memory_limit_mb)
                log_file.write(f"gpgpu: the job ran out of memory ({memory_mb} MiB)\n".encode())
        tail = read_log_tail(log_path)
        if state is None:
            timed_out = not (cancel_event is not None and cancel_event.is_set())
            return RunOutcome(None, timed_out, wall_ms(), tail)
        return RunOutcome(int(state["ExitCode"]), False, wall_ms(), tail)

    def kill_all(self) -> None:
        with self._lock:
            containers = list(self._running.values())
        for container in containers:
            self._remove(container)

    # -- steps of a run ----------------------------------------------------------

    def _require_image(self, image: str) -> None:
        # A production agent would pull here; this network has no registry, so the
        # provider loads its images ahead of time (docker load / docker import).
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ImageUnavailable(
                f"container image {image!r} is not on provider {self.provider_id}; "
                "this agent does not pull images"
            ) from None
        except docker.errors.APIError as err:
            raise ImageUnavailable(f"container image {image!r}: {err.explanation}") from None
        except (docker.errors.DockerException, requests.RequestException) as err:
            raise EngineUnavailable(f"the Docker engine did not answer: {err}") from None

    def _memory_mb(self, gpu_indexes: list[int], memory_limit_mb: int | None) -> int:
        return memory_limit_mb or self.limits.memory_mb(len(gpu_indexes))

    def _create(
        self,
        image: str,
        command: list[str],
        workdir: Path,
        gpu_indexes: list[int],
        env: dict[str, str],
        user: str,
        job_id: str | None,
        memory_limit_mb: int | None,
        with_network: bool,
    ) -> Any:
        memory_mb = self._memory_mb(gpu_indexes, memory_limit_mb)
        devices = None
        if self.gpu_devices and gpu_indexes:
            devices = [
                docker.types.DeviceRequest(
                    device_ids=[str(i) for i in gpu_indexes], capabilities=[["gpu"]]
                )
            ]
        try:
            return self._client.containers.create(
                image,
                command,
                name=f"gpgpu-{job_id or 'job'}-{uuid.uuid4().hex[:8]}",
                labels={LABEL_JOB: job_id or "", LABEL_PROVIDER: self.provider_id},
                environment=container_environment(gpu_indexes, env, gpu_devices=self.gpu_devices),
                working_dir=WORKDIR,
                user=user,
                mounts=[docker.types.Mount(WORKDIR, str(workdir), type="bind", read_only=False)],
                read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,mode=1777,size={memory_mb}m"},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                network_mode=self.job_network if with_network else "none",
                mem_limit=f"{memory_mb}m",
                memswap_limit=f"{memory_mb}m",  # no swap on top
                nano_cpus=self.limits.nano_cpus(len(gpu_indexes)),
                pids_limit=self.limits.pids,
                ulimits=[docker.types.Ulimit(name="fsize", soft=self.limits.disk_mb * 2**20,
                                             hard=self.limits.disk_mb * 2**20),
                         docker.types.Ulimit(name="core", soft=0, hard=0)],
                device_requests=devices,
                stdin_open=False,
                tty=False,
            )
        except docker.errors.ImageNotFound:
            raise ImageUnavailable(f"container image {image!r} went from this provider") from None
        except docker.errors.APIError as err:
            hint = ""
            if devices and "device driver" in str(err.explanation):
                hint = " (is the NVIDIA container toolkit installed and docker restarted?)"
            raise EngineUnavailable(
                f"the Docker engine refused the container: {err.explanation}{hint}"
            ) from None

    def _start_and_wait(
        self,
        container: Any,
        command: list[str],
        log_file: IO[bytes],
        log_path: Path,
        deadline: float,
        on_progress: ProgressFn | None,
        cancel_event: threading.Event | None,
        workdir: Path,
    ) -> dict[str, Any] | None:
        """Start the container, stream its output into log_file, wait; its final state,
        or None when it had to be killed."""
        with self._lock:
            self._running[container.id] = container
        try:
            container.start()
        except docker.errors.APIError as err:
            code = _start_failure(err)
            if code is None:
                raise EngineUnavailable(f"the container did not start: {err.explanation}") from None
            log_file.write(f"cannot start {command[0]!r}: {err.explanation}\n".encode())
            log_file.flush()
            return {"Status": "created", "ExitCode": code}
        stream = container.logs(stream=True, follow=True, stdout=True, stderr=True)
        pump = threading.Thread(
            target=_pump, args=(stream, log_file), name="container-log", daemon=True
        )
        pump.start()
        try:
            return self._wait(container, deadline, log_path, on_progress, cancel_event, workdir)
        finally:
            # The stream ends once the container stops; what it still holds is the end
            # of the log, so give it a moment before cutting it off.
            pump.join(timeout=5)
            stream.close()
            pump.join(timeout=1)

    def _wait(
        self,
        container: Any,
        deadline: float,
        log_path: Path,
        on_progress: ProgressFn | None,
        cancel_event: threading.Event | None,
        workdir: Path,
    ) -> dict[str, Any] | None:
        """The container's final state, or None when it had to be killed (timeout, cancel);
        Status "full" (exit 137) when its work dir went past the disk limit."""
        started = time.monotonic()
        next_tick = started + self._tick_s
        limit = self.limits.disk_mb * 2**20
        while True:
            try:
                state: dict[str, Any] = self._client.api.inspect_container(container.id)["State"]
            except docker.errors.NotFound:
                # Removed under us by kill_all: killed, as a shell would report SIGKILL.
                return {"Status": "removed", "ExitCode": 137}
            if state["Status"] in ("exited", "dead"):
                if disk_usage(workdir) > limit:
                    return {"Status": "full", "ExitCode": 137}
                settle = time.monotonic() + OOM_SETTLE_S
                while (state.get("ExitCode") == 137 and not state.get("OOMKilled")
                       and time.monotonic() < settle):
                    time.sleep(0.05)
                    with contextlib.suppress(docker.errors.NotFound):
                        state = self._client.api.inspect_container(container.id)["State"]
                return state
            now = time.monotonic()
            if (cancel_event is not None and cancel_event.is_set()) or now >= deadline:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    container.kill()  # SIGKILL, at once: a cancel must free the GPUs now
                return None
            if now >= next_tick:
                next_tick = now + self._tick_s
                trim_log(log_path, self._log_max_bytes)
                if disk_usage(workdir) > limit:
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        container.kill()
                    return {"Status": "full", "ExitCode": 137}
                if on_progress is not None:
                    on_progress(now - started, read_log_tail(log_path))
            if cancel_event is not None:
                cancel_event.wait(min(self._poll_s, max(0.0, deadline - now)))
            else:
                time.sleep(min(self._poll_s, max(0.0, deadline - now)))

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True, v=True)  # kills it first when still running
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            # "removal already in progress" when kill_all and the run meet: that one wins.
            if "in progress" not in str(err.explanation):
                log.warning("could not remove container %s: %s", container.name, err)
        except requests.RequestException as err:
            # The engine is gone; the agent's startup sweep removes it once it is back.
            log.warning("could not remove container %s: %s", container.name, err)
        with self._lock:
            self._running.pop(container.id, None)


def connect() -> docker.DockerClient:
    """The engine DOCKER_HOST names (else the default socket), checked with a ping."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EngineUnavailable(f"the Docker engine at {host} does not answer: {reason}") from None
    return client
