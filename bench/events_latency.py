"""The subscription's figures of `python -m bench events`: from an event saved to each
websocket subscriber of the real API reading it, and what idle subscriptions cost."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench import subscribers as many
from bench._common import cpu_seconds, say
from bench.events_store import SPEC, step_data
from client.subscription import SUBPROTOCOL, JobEventsSession
from domain.application import Network
from domain.states import TERMINAL_EVENTS
from infra.settings import Settings
from ops.devstack import Stack
from ops.launch import free_port, temporal_dev_args, wait_for_http


@dataclass
class Followers:
    """What the subscribers saw: arrival times per subscriber, keyed by step attempt."""

    subscribers: int
    events: int
    token: str = ""

    def __post_init__(self) -> None:
        self.arrivals: list[dict[int, float]] = [{} for _ in range(self.subscribers)]
        self.joined = 0
        self.received = 0
        self.all_joined = asyncio.Event()
        self.all_received = asyncio.Event()

    async def follow(self, n: int, url: str, job_id: str) -> None:
        session = JobEventsSession(self.token, job_id, after=0)
        async with connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], open_timeout=60,
                           ping_interval=None, max_queue=None) as ws:
            await ws.send(session.init_message())
            async for raw in ws:
                arrived = time.perf_counter()
                step = session.handle(raw)
                if step.reply:
                    await ws.send(step.reply)
                if step.event is not None and step.event.type == "JobSubmitted":
                    self.joined += 1
                    if self.joined == self.subscribers:
                        self.all_joined.set()
                elif step.event is not None and step.event.type == "InputsStaged":
                    self.arrivals[n][int(step.event.data["attempt"])] = arrived
                    self.received += 1
                    if self.received == self.subscribers * self.events:
                        self.all_received.set()
                if step.done:
                    return


async def wait_or_fail(flag: asyncio.Event, tasks: list[asyncio.Task[None]], timeout: float,
                       what: str) -> None:
    """Wait for `flag`; a subscriber that stops first, or the timeout, is an error."""
    waiter = asyncio.ensure_future(flag.wait())
    try:
        done, _ = await asyncio.wait([waiter, *tasks], timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if waiter in done:
        return
    for task in done:
        task.result()
    raise RuntimeError(f"{'a subscriber stopped' if done else 'timed out'} before {what}")


def append_steps(network: Network, job_id: str, events: int, interval_s: float,
                 commits: dict[int, float]) -> None:
    # The job stays loaded: replaying it before every step would take CPU from the subscribers.
    job = network.job(job_id)
    start = time.perf_counter()
    for attempt in range(1, events + 1):
        job.record_step("inputs_staged", attempt, step_data("inputs_staged", "bench-p0", job_id))
        network.save(job)
        commits[attempt] = time.perf_counter()
        time.sleep(max(0.0, start + attempt * interval_s - time.perf_counter()))


async def follow_job(network: Network, url: str, job_id: str, subscribers: int, events: int,
                     interval_s: float, token: str) -> list[float]:
    followers = Followers(subscribers, events, token)
    tasks = [asyncio.create_task(followers.follow(n, url, job_id)) for n in range(subscribers)]
    try:
        await wait_or_fail(followers.all_joined, tasks, 60, "every subscriber joined")
        say(f"  {subscribers} subscribers joined; appending {events} events "
            f"{interval_s * 1000:.0f} ms apart")
        commits: dict[int, float] = {}
        await asyncio.to_thread(append_steps, network, job_id, events, interval_s, commits)
        await wait_or_fail(followers.all_received, tasks, 120, "every event arrived everywhere")
        last = max(max(arrivals.values()) for arrivals in followers.arrivals)
        say(f"  delivered {subscribers * events / (last - commits[1]):.0f} events/s "
            f"to the subscribers")
        await asyncio.to_thread(network.finish_job, job_id, True, "")
        await asyncio.wait_for(asyncio.gather(*tasks), 30)  # JobSucceeded ends every stream
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [
        (arrivals[attempt] - committed) * 1000
        for arrivals in followers.arrivals
        for attempt, committed in commits.items()
    ]


@contextmanager
def api_processes(home: Path) -> Iterator[Stack]:
    """A Temporal dev server and the API, as real processes on free ports, over a SQLite store."""
    temporal_port, api_port = free_port(), free_port()
    settings = Settings(
        home=home, event_store="sqlite", api_host="127.0.0.1", api_port=api_port,
        api_url=f"http://127.0.0.1:{api_port}", temporal_address=f"127.0.0.1:{temporal_port}",
    )
    stack = Stack(settings, {
        "GPGPU_EVENT_STORE": "sqlite", "GPGPU_API_HOST": "127.0.0.1",
        "GPGPU_API_PORT": str(api_port), "GPGPU_API_URL": settings.api_url,
        "GPGPU_TEMPORAL_ADDRESS": settings.temporal_address, "GPGPU_LOG_LEVEL": "WARNING",
        # Every subscriber of the bench is one account: past the default cap of 32.
        "GPGPU_MAX_SUBSCRIPTIONS_PER_ACCOUNT": "10000",
        "GPGPU_SIGN_UPS_PER_ADDRESS": "1000000",  # every account from 127.0.0.1
    })
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        stack.spawn_listening("temporal", lambda: temporal_dev_args(
            temporal_port, home / "temporal.db", wal=False, search_attributes=False,
        ), "127.0.0.1", temporal_port, "the Temporal dev server")  # fmt: skip
        stack.spawn("api", [sys.executable, "-m", "api"])
        wait_for_http(f"{settings.api_url}/healthz", 60, "the API")
        yield stack
    except Exception:
        for child in stack.children:
            say(f"--- {child.log} ---\n{child.log.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        stack.stop(quiet=True)
        signal.signal(signal.SIGINT, interrupt)  # Stack.stop ignores Ctrl-C from then on


SIGN_UP = """mutation($e: String!, $p: String!) {
  signUp(email: $e, password: $p, roles: ["client"]) {
    ... on Session { token user { clientId } } ... on FieldError { field message } } }"""


def sign_up(api_url: str) -> tuple[str, str]:
    """A client account for the bench: its session token and client id."""
    variables = {"e": f"bench-{uuid.uuid4().hex[:8]}@bench.local", "p": secrets.token_hex(12)}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        body = http.post("/graphql", json={"query": SIGN_UP, "variables": variables}).json()
    if body.get("errors"):
        raise RuntimeError(f"signing the bench up failed: {body['errors']}")
    session = body["data"]["signUp"]
    if "token" not in session:
        raise RuntimeError(f"signing the bench up was refused: {session['field']}: "
                           f"{session['message']}")
    return str(session["token"]), str(session["user"]["clientId"])


def wait_for_job(api_url: str, job_id: str, token: str, timeout_s: float = 30) -> None:
    query = "query($id: ID!) { job(id: $id) { id } }"
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=10) as http:
        while time.monotonic() < deadline:
            body = http.post("/graphql", json={"query": query, "variables": {"id": job_id}}).json()
            if (body.get("data") or {}).get("job"):
                return
            time.sleep(0.05)
    raise RuntimeError(f"the API never showed job {job_id}")


def measure_latency(workdir: Path, subscribers: int, events: int,
                    interval_s: float) -> list[float]:
    with api_processes(workdir / "latency") as stack:
        settings = stack.settings
        api_pid = next(c.proc.pid for c in stack.children if c.name == "api")
        network = Network(env=settings.eventsourcing_env())
        try:
            token, client_id = sign_up(settings.api_url)
            job_id = str(uuid.uuid4())
            network.submit_job(job_id, client_id, SPEC)
            wait_for_job(settings.api_url, job_id, token)
            url = f"ws://127.0.0.1:{settings.api_port}/graphql"
            cpu = cpu_seconds(api_pid), cpu_seconds(os.getpid())
            ms = asyncio.run(follow_job(network, url, job_id, subscribers, events, interval_s,
                                        token))
            api_cpu, own_cpu = cpu_seconds(api_pid) - cpu[0], cpu_seconds(os.getpid()) - cpu[1]
            say(f"  CPU per event sent to {subscribers} subscribers: API process "
                f"{api_cpu / events * 1000:.1f} ms, this process {own_cpu / events * 1000:.1f} ms")
            return ms
        finally:
            network.close()


def measure_idle(workdir: Path, n: int) -> float:
    """Bytes of the API's memory per idle subscription, each on its own job and websocket."""
    with api_processes(workdir / "idle") as stack:
        settings = stack.settings
        api_pid = next(c.proc.pid for c in stack.children if c.name == "api")
        network = Network(env=settings.eventsourcing_env())
        try:
            token, client_id = sign_up(settings.api_url)
            job_ids = [str(uuid.uuid4()) for _ in range(n)]
            for job_id in job_ids:
                network.submit_job(job_id, client_id, SPEC)
            wait_for_job(settings.api_url, job_ids[-1], token, 120)
            url = f"ws://127.0.0.1:{settings.api_port}/graphql"
            return asyncio.run(many.idle_growth(url, token, job_ids, api_pid))
        finally:
            network.close()


def measure_own_jobs(workdir: Path, args: argparse.Namespace) -> many.OwnJobsResult:
    return asyncio.run(many.own_jobs(
        workdir / "own-jobs", args.own_jobs, args.providers, args.gpus, clients=10,
        submitters=16, cpu_seconds=cpu_seconds, terminal=frozenset(TERMINAL_EVENTS)))

