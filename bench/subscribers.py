"""Two rows of `python -m bench events` about many live subscriptions (issue 16):

- own_job_latency_p50_ms / _p99_ms {subscribers}: `--own-jobs` jobs submitted through the
  API of a real network (API, control worker, simulated providers) as fast as it takes
  them, each followed from its submission to its end by a websocket subscriber of its own,
  while the network runs them at full speed. Per event, the time it arrived at its
  subscriber minus the time the event was stamped (its `at`, taken where it was
  recorded, before the commit), for the events stamped after the subscribe message went
  out. Labels: the most subscribers live at once, the jobs per second the network ran,
  CPU ms per delivered event in the API process.
- idle_subscription_kib {subscribers}: the API process's resident memory grown by opening
  `--idle` subscriptions, each on its own websocket and following its own job (which does
  not move: no control worker), divided by their number. A warm-up opens and closes a few
  first, so what is measured is the cost per subscription, not the first one's imports.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from client.subscription import SUBPROTOCOL, JobEventsSession


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux; 0 elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def open_subscription(url: str, session: JobEventsSession) -> ClientConnection:
    """A websocket with the job's subscription on it, once its first event has arrived."""
    ws = await connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], open_timeout=120,
                       ping_interval=None, max_queue=None)
    try:
        await ws.send(session.init_message())
        async for raw in ws:
            step = session.handle(raw)
            if step.reply:
                await ws.send(step.reply)
            if step.event is not None or step.done:
                return ws
        raise RuntimeError("the API closed the subscription before its first event")
    except BaseException:
        await ws.close()
        raise


async def idle_growth(url: str, token: str, job_ids: list[str], api_pid: int,
                      warm_up: int = 20) -> float:
    """Bytes of the API's resident memory per idle subscription."""
    warm = [await open_subscription(url, JobEventsSession(token, j, 0))
            for j in job_ids[:warm_up]]
    for ws in warm:
        await ws.close()
    await asyncio.sleep(2)
    before = rss_bytes(api_pid)
    gate = asyncio.Semaphore(50)

    async def one(job_id: str) -> ClientConnection:
        async with gate:
            return await open_subscription(url, JobEventsSession(token, job_id, 0))

    opened = await asyncio.gather(*(one(j) for j in job_ids))
    await asyncio.sleep(2)
    after = rss_bytes(api_pid)
    say(f"  {len(opened)} idle subscriptions: the API's memory {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB")
    await asyncio.gather(*(ws.close() for ws in opened))
    return (after - before) / len(opened)


@dataclass
class OwnJob:
    """One job and what its subscriber saw."""

    job_id: str
    token: str
    subscribed: float = 0.0  # when the subscribe message went out (wall clock)
    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)


@dataclass
class Live:
    now: int = 0
    most: int = 0

    def change(self, by: int) -> None:
        self.now += by
        self.most = max(self.most, self.now)


async def follow_own(url: str, job: OwnJob, live: Live) -> None:
    session = JobEventsSession(job.token, job.job_id, after=0)
    async with connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], open_timeout=120,
                       ping_interval=None, max_queue=None) as ws:
        await ws.send(session.init_message())
        try:
            async for raw in ws:
                arrived = time.time()
                acked = session.acked
                step = session.handle(raw)
                if step.reply:
                    if session.acked and not acked:  # the reply is the subscribe message
                        job.subscribed = time.time()
                        live.change(1)
                    await ws.send(step.reply)
                if step.event is not None:
                    job.seqs.append(step.event.seq)
                    job.types.append(step.event.type)
                    at = datetime.fromisoformat(step.event.at).timestamp()
                    if at >= job.subscribed:
                        job.ms.append((arrived - at) * 1000)
                if step.done:
                    return
        finally:
            if job.subscribed:
                live.change(-1)


@dataclass
class OwnJobsResult:
    ms: list[float]
    most_live: int
    jobs_per_s: float
    api_cpu_ms_per_event: float


async def own_jobs(home: Path, jobs: int, providers: int, gpus: int, clients: int,
                   submitters: int, cpu_seconds: Callable[[int], float],
                   terminal: frozenset[str]) -> OwnJobsResult:
    """Each of `jobs` jobs followed by a subscriber of its own while the network runs them."""
    from temporalio.client import Client

    from bench._common import bounded
    from bench.pipeline_jobs import ENOUGH, Options, Pipeline
    from bench.pipeline_procs import Processes

    procs = Processes(home)
    procs.env["GPGPU_MAX_SUBSCRIPTIONS_PER_ACCOUNT"] = "10000"  # clients take turns: past 32
    try:
        procs.start_temporal()
        temporal = await Client.connect(procs.temporal_address,  # reads our jobs' results
                                        data_converter=procs.settings.temporal_converter())
        pipeline = Pipeline(procs, temporal, Options(jobs, providers, gpus, clients,
                                                     submitters, 0.0, 0.0, 0))
        try:
            ids = await pipeline.start()
            await pipeline.wait_online(ids)
            api_pid = procs.pids()["api"]
            url = f"ws://127.0.0.1:{procs.api_port}/graphql"
            say(f"  {len(ids)} providers with {gpus} GPUs each online; submitting {jobs} jobs, "
                f"{submitters} requests in flight, each followed by its own subscriber")
            followed: list[OwnJob] = []
            tasks: list[asyncio.Task[None]] = []
            live = Live()
            cpu, first = cpu_seconds(api_pid), time.time()

            async def submit_and_follow(_: int) -> None:
                token = pipeline.next_client()  # the one submit() takes next
                job = OwnJob(await pipeline.submit(), token)
                followed.append(job)
                tasks.append(asyncio.create_task(follow_own(url, job, live)))

            await bounded(list(range(jobs)), submitters, submit_and_follow)
            say(f"  submitted in {time.time() - first:.1f} s; "
                f"{live.most} subscribers live at most so far")
            await wait_all(tasks, max(120.0, ENOUGH * jobs), procs.check_alive)
            last = time.time()
            api_cpu = cpu_seconds(api_pid) - cpu
        finally:
            await pipeline.close()
    except BaseException:
        procs.log_tails()
        raise
    finally:
        procs.stop_all()
    for job in followed:
        if job.seqs != list(range(1, len(job.seqs) + 1)) or job.types[-1:] == [] \
                or job.types[-1] not in terminal:
            raise RuntimeError(f"job {job.job_id}'s subscriber saw seqs {job.seqs}, "
                               f"types {job.types}")
    ms = [m for job in followed for m in job.ms]
    events = sum(len(job.seqs) for job in followed)
    return OwnJobsResult(ms, live.most, jobs / (last - first), api_cpu / events * 1000)


async def wait_all(tasks: list[asyncio.Task[None]], timeout_s: float,
                   check: Callable[[], None]) -> None:
    """Every task done (one that fails fails the run), within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    pending = set(tasks)
    try:
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} of {len(tasks)} subscribers never saw "
                                   f"their job end")
            done, pending = await asyncio.wait(pending, timeout=2.0)
            for task in done:
                task.result()
            check()  # e.g. a process of the network died
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

