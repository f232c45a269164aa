"""The provider agent: find the GPUs, join the network, run this provider's assignments.

The agent speaks only HTTPS to the network's API, with its own provider key: it
registers, heartbeats, long-polls its assignments (stage, execute, upload) and reports
each one's heartbeats and result (api/assignments.py). It never reaches Temporal.
Order matters: the heartbeat starts only once the agent polls, so the node never
allocates GPUs of a provider that cannot yet pick the work up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from infra.settings import Settings
from worker_gpu.activities import GpuActivities
from worker_gpu.api_client import (
    UNREACHABLE_BACKOFF_S,
    ApiRejected,
    ApiUnreachable,
    HeartbeatThread,
    ProviderApi,
    registration_input,
)
from worker_gpu.assignments import ApiStepContext, run_assignment
from worker_gpu.config import AgentConfig
from worker_gpu.discovery import (
    GpuInfo,
    GpuTelemetry,
    NvmlTelemetry,
    NvmlUnavailable,
    discover_nvml,
    parse_simulated,
    simulated_telemetry,
)
from worker_gpu.runtime import JobRuntime
from worker_gpu.runtime_docker import ContainerLimits, DockerRuntime, EngineUnavailable
from worker_gpu.runtime_process import ProcessRuntime
from worker_gpu.sandbox import Bwrap, JobLimits, SandboxUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BACKOFF_S = 10.0
# How long one long-poll for assignments waits at the API (its maximum is 25 s).
POLL_WAIT_S = 20.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NO_GPUS = 2
EXIT_NO_ENGINE = 3
EXIT_NO_SANDBOX = 4

# The engine network that jobs asking for one get, with --allow-network.
JOB_NETWORK = "bridge"


class Stopped(Exception):
    """SIGTERM or SIGINT arrived while the agent was still starting."""


def say(line: str) -> None:
    print(line, flush=True)


async def _until_answered(what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
    """Retry `attempt` with capped exponential backoff until it answers or we are stopped."""
    delay = 0.5
    while True:
        try:
            return await attempt()
        except ApiUnreachable as err:
            reason = str(err)
        say(f"waiting for {what} ({reason}); retrying in {delay:.1f}s")
        try:
            await asyncio.wait_for(stop.wait(), delay)
            raise Stopped()
        except TimeoutError:
            delay = min(delay * 2, MAX_BACKOFF_S)


def find_gpus(config: AgentConfig) -> tuple[list[GpuInfo], NvmlTelemetry | None]:
    """Declared GPUs when --simulate is given, else the driver's; NvmlUnavailable if neither."""
    if config.simulate:
        return parse_simulated(config.simulate, namespace=config.provider_id), None
    return discover_nvml(), NvmlTelemetry()


def make_runtime(config: AgentConfig, gpus: list[GpuInfo]) -> JobRuntime:
    """The runtime --runtime names; for docker, checks the engine answers (EngineUnavailable
    if not) and removes the containers a crashed run of this provider left behind."""
    if config.runtime == "process":
        return make_process_runtime(config, gpus)
    limits = ContainerLimits.machine_share(
        len(gpus), config.job_memory_mb_per_gpu, config.job_cpus_per_gpu, config.job_pids_limit,
        config.job_disk_mb,
    )
    runtime = DockerRuntime(
        config.provider_id,
        limits,
        gpu_devices=not config.simulate,
        job_network=JOB_NETWORK if config.allow_network else None,
    )
    left = runtime.sweep()
    if left:
        say(f"removed {len(left)} containers left by an earlier run: {', '.join(left)}")
    say(
        f"docker runtime: per GPU {limits.memory_mb_per_gpu} MiB and {limits.cpus_per_gpu:g} "
        f"CPUs, {limits.pids} pids, work dir {limits.disk_mb} MiB per job, network "
        + ("for jobs that ask" if config.allow_network else "never")
    )
    return runtime


def make_process_runtime(config: AgentConfig, gpus: list[GpuInfo]) -> ProcessRuntime:
    """The process runtime, sandboxed unless --unsafe-no-sandbox; SandboxUnavailable when
    bubblewrap is missing or cannot create a sandbox here."""
    share = ContainerLimits.machine_share(
        len(gpus), config.job_memory_mb_per_gpu, config.job_cpus_per_gpu, config.job_pids_limit
    )
    limits = JobLimits(
        memory_mb_per_gpu=share.memory_mb_per_gpu,
        cpus_per_gpu=share.cpus_per_gpu,
        pids=config.job_pids_limit,
        disk_mb=config.job_disk_mb,
        tmp_mb=config.job_tmp_mb,
    )
    if config.unsafe_no_sandbox:
        say("WARNING: --unsafe-no-sandbox: jobs run as plain processes of this agent's user; "
            "they can read this machine's files and reach its services")  # fmt: skip
        return ProcessRuntime(limits=limits, allow_network=config.allow_network,
                              unsafe_no_sandbox=True, gpus=gpus)  # fmt: skip
    bwrap = Bwrap()
    bwrap.check()
    runtime = ProcessRuntime(limits=limits, allow_network=config.allow_network, bwrap=bwrap,
                             gpus=gpus)  # fmt: skip
    memory = "per job (" + runtime.cgroups.describe() + ")" if runtime.cgroups else \
        "per process (no control groups can be made here)"  # fmt: skip
    say(
        f"process runtime: bubblewrap sandbox; per GPU {limits.memory_mb_per_gpu} MiB "
        f"{memory} and {limits.cpus_per_gpu:g} CPUs, {limits.pids} pids, work dir "
        f"{limits.disk_mb} MiB, /tmp {limits.tmp_mb} MiB per job, network "
        + ("for jobs that ask (this machine's)" if config.allow_network else "never")
    )
    return runtime


async def serve(config: AgentConfig, settings: Settings) -> int:
    try:
        gpus, nvml = find_gpus(config)
    except NvmlUnavailable as err:
        say(f"no NVIDIA driver found ({err}); start with --simulate to declare GPUs")
        return EXIT_NO_GPUS
    except ValueError as err:
        say(f"--simulate: {err}")
        return EXIT_NO_GPUS
    for gpu in gpus:
        kind = "simulated" if config.simulate else f"driver {gpu.driver_version}"
        say(f"GPU {gpu.index}: {gpu.model}, {gpu.memory_mb} MiB, {gpu.uuid} ({kind})")

    try:
        runtime = make_runtime(config, gpus)
    except EngineUnavailable as err:
        say(f"{err}; start dockerd (or set DOCKER_HOST), or run with --runtime process")
        return EXIT_NO_ENGINE
    except SandboxUnavailable as err:
        say(f"{err}; jobs are not run without a sandbox unless the agent is started with "
            "--unsafe-no-sandbox")  # fmt: skip
        return EXIT_NO_SANDBOX
    scratch = config.scratch or settings.home / "scratch" / config.provider_id
    activities = GpuActivities(
        config.provider_id,
        scratch,
        runtime,
        gpu_indexes=[g.index for g in gpus],
        corrupt_outputs=config.corrupt_outputs,
        wrong_results=config.wrong_results,
        disk_mb=config.job_disk_mb,
    )
    if config.corrupt_outputs:
        say("WARNING: --corrupt-outputs: this provider reports wrong output digests (test only)")

    def read_telemetry() -> list[GpuTelemetry]:
        if nvml is not None:
            return nvml.read()
        return simulated_telemetry(gpus, activities.busy_gpu_indexes())

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    heartbeat: HeartbeatThread | None = None
    slots = len(gpus) + 2
    executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="gpu-step")
    contexts: dict[str, ApiStepContext] = {}
    running: set[Future[None]] = set()
    steps_api = ProviderApi(settings.api_url)  # every step's heartbeats and reports
    try:
        registration = registration_input(
            config.provider_id,
            config.region,
            config.price_per_gpu_hour_micro,
            gpus,
            runtimes=config.runtimes,
            node=config.node,
            sandbox=runtime.sandbox_name if isinstance(runtime, ProcessRuntime) else "docker",
        )
        api = ProviderApi(settings.api_url, timeout_s=POLL_WAIT_S + 10.0)
        try:
            provider_id = await _until_answered(
                f"the API at {api.base}",
                lambda: asyncio.to_thread(api.register, registration),
                stop,
            )
            say(f"registered provider {provider_id} in region {config.region}")
            heartbeat = HeartbeatThread(
                settings.api_url,
                config.provider_id,
                read_telemetry,
                settings.provider_heartbeat_interval_s,
            )
            heartbeat.start()
            say(f"taking assignments for provider {config.provider_id} from {api.base} "
                f"with {len(gpus)} GPUs; Ctrl-C to stop")
            await _take_assignments(api, config.provider_id, stop, running, lambda a:
                                    executor.submit(run_assignment, steps_api,
                                                    activities, a, contexts))
        finally:
            api.close()
        say(
            "stopping: no new work is taken; running assignments get "
            f"{config.shutdown_grace_s:g}s to finish"
        )
        # Drain: first silence the heartbeat and mark the provider offline, so that the
        # scheduler places nothing more here while running work finishes or is handed back.
        heartbeat.stop()
        await _drain(settings.api_url, config.provider_id)
        if running:
            await asyncio.wait([asyncio.wrap_future(f) for f in running],
                               timeout=config.shutdown_grace_s)
        for ctx in list(contexts.values()):  # past the grace: stop them, and say so
            ctx.cancel()
        if running:
            await asyncio.wait([asyncio.wrap_future(f) for f in running], timeout=15.0)
        say("stopped")
        return EXIT_OK
    except Stopped:
        say("stopped before the provider was serving")
        return EXIT_OK
    except ApiRejected as err:
        say(f"the API refused provider {config.provider_id}: {err}")
        return EXIT_FAILED
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        runtime.kill_all()  # no job outlives its agent on a GPU
        executor.shutdown(wait=False, cancel_futures=True)
        steps_api.close()
        if nvml is not None:
            nvml.close()


def _on_daemon_thread(fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
    """fn(*args) on a daemon thread of its own. Unlike asyncio.to_thread, the process does
    not wait for it when it exits: a long poll still open when SIGTERM came would hold the
    agent's exit for up to POLL_WAIT_S (past a supervisor's patience: it then kills it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits now
            loop.call_soon_threadsafe(lambda: future.done() or outcome())

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as err:
            settle(functools.partial(future.set_exception, err))
        else:
            settle(functools.partial(future.set_result, result))

    threading.Thread(target=run, name="assignments-poll", daemon=True).start()
    return future


async def _take_assignments(
    api: ProviderApi, provider_id: str, stop: asyncio.Event,
    running: set[Future[None]], start: Callable[[dict[str, object]], Future[None]],
) -> None:
    """Long-poll the API for this provider's assignments and start each, until stopped.

    An API that does not answer is asked again with capped backoff; the assignments
    running meanwhile go on (their heartbeats retry on their own).
    """
    delay = 0.5
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            running.difference_update({f for f in running if f.done()})
            poll = _on_daemon_thread(api.assignments, provider_id, POLL_WAIT_S)
            either: set[asyncio.Future[Any]] = {poll, stopping}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not poll.done():
                poll.cancel()  # stopped: what this poll might still bring is never started
                return
            try:
                for assignment in poll.result():
                    log.info("assignment %s: %s", assignment.get("assignmentId"),
                             assignment.get("kind"))
                    running.add(start(assignment))
                delay = 0.5
            except ApiUnreachable as err:
                delay = min(delay, UNREACHABLE_BACKOFF_S)
                cap = UNREACHABLE_BACKOFF_S
                say(f"waiting for the API ({err}); retrying in {delay:.1f}s")
            except ApiRejected as err:
                if err.status in (401, 403):
                    raise
                cap = MAX_BACKOFF_S
                say(f"the API refused the poll ({err}); retrying in {delay:.1f}s")
            else:
                continue
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, cap)
    finally:
        stopping.cancel()


async def _drain(api_url: str, provider_id: str) -> None:
    """Best effort: an API that does not answer cannot give new work either."""
    api = ProviderApi(api_url, timeout_s=5.0)
    try:
        await asyncio.to_thread(api.drain, provider_id)
    except Exception as err:  # the agent stops anyway; the liveness monitor will notice
        say(f"could not tell the API this provider is draining: {err}")
    finally:
        api.close()
