"""`python -m bench events`: the event store, the projection and the job-events subscription.

Figures, one JSON line each on stdout (progress goes to stderr):

- append_events_per_s {store, mode}: events per second through `Network.save`
  (encoding, insert, commit; building the events is not timed). `single` saves
  each event on its own, `batched` saves a new job with 100 events at once.
- rebuild_events_per_s {store}: `Projector.rebuild()` over whole job lifecycles
  (jobs, their steps, ledger entries, provider reservations), checked afterwards
  against what was stored.
- subscriber_latency_p50_ms / _p99_ms {subscribers}: from the moment `save`
  returns in this process to the moment each websocket subscriber of the real
  API process reads the event, over every (subscriber, event) pair.
- own_job_latency_p50_ms / _p99_ms and idle_subscription_kib: many subscribers,
  each following its own job (bench/subscribers.py says how they are measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from eventsourcing.domain import Aggregate
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench import subscribers as many
from client.subscription import SUBPROTOCOL, JobEventsSession
from domain.application import Network
from domain.job import Job
from domain.ledger import (
    EXTERNAL,
    FEES,
    Account,
    client_account,
    escrow_account,
    provider_account,
    transfer,
)
from domain.provider import Provider
from domain.states import TERMINAL_EVENTS
from infra.settings import Settings
from ops.devstack import Stack, free_port, temporal_dev_args, wait_for_http
from protocol.money import cost_of_gpu_time
from protocol.spec import JobSpec
from readmodel.projector import Projector
from readmodel.schema import ViewDB

SPEC = JobSpec.model_validate({
    "name": "bench", "command": ["python3", "train.py"], "outputs": ["out/model.pt"],
    "max_price_per_gpu_hour": "2.5", "timeout": "5m",
})
PRICE_MICRO = 2_500_000
GPU_MS = 60_000
FEE_BPS = 500
STARTING_BALANCE_MICRO = 100_000_000
PARTS = ("append", "rebuild", "latency", "own_jobs", "idle")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    line = {"bench": "events", "metric": metric, "value": round(value, 2), "unit": unit, **labels}
    print(json.dumps(line), flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@contextmanager
def event_store(kind: str, workdir: Path) -> Iterator[Settings]:
    """Settings for a fresh, empty store: a new SQLite home, or a new PostgreSQL schema."""
    home = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    if kind == "sqlite":
        yield Settings(home=home, event_store="sqlite")
        return
    schema = f"bench_events_{os.getpid()}_{secrets.token_hex(3)}"
    settings = Settings(home=home, event_store="postgres", pg_schema=schema)
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield settings
    finally:
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def step_data(step: str, provider_id: str, job_id: str) -> dict[str, Any]:
    """What a provider reports for each step, shaped as the Job's event methods take it."""
    steps: dict[str, dict[str, Any]] = {
        "inputs_staged": {"provider_id": provider_id, "files": 2, "bytes": 4096},
        "execution_started": {"provider_id": provider_id},
        "execution_finished": {
            "provider_id": provider_id, "exit_code": 0, "timed_out": False,
            "gpu_ms": GPU_MS, "log_tail": "epoch 10/10 loss 0.031\n",
        },
        "outputs_uploaded": {
            "provider_id": provider_id, "missing": [], "manifest": [{
                "path": "out/model.pt", "key": f"jobs/{job_id}/out/model.pt",
                "sha256": "ab" * 32, "size": 1_048_576,
            }],
        },
    }
    return steps[step]


def new_job(job_id: str, client_id: str = "bench") -> Job:
    return Job(
        job_id=job_id, client_id=client_id, spec=SPEC.model_dump(mode="json"),
        max_cost_micro=SPEC.max_cost_micro,
    )


# Append


def append_rate(app: Network, events: int, per_save: int) -> float:
    """Events/s saving `per_save` events at a time: a new job, then InputsStaged steps."""
    saved, seconds = 0, 0.0
    job = new_job(str(uuid.uuid4()))
    attempt = 0
    while saved < events:
        if attempt == 99:  # keep aggregates realistically small: a fresh job every 100 events
            job, attempt = new_job(str(uuid.uuid4())), 0
        while len(job.pending_events) < per_save and attempt < 99:
            attempt += 1
            job.record_step("inputs_staged", attempt, step_data("inputs_staged", "p", ""))
        n = len(job.pending_events)
        started = time.perf_counter()
        app.save(job)
        seconds += time.perf_counter() - started
        saved += n
    return saved / seconds


def measure_append(kind: str, workdir: Path, single: int, batched: int) -> dict[str, float]:
    with event_store(kind, workdir) as settings:
        app = Network(env=settings.eventsourcing_env())
        try:
            append_rate(app, 200, 100)  # warm up: tables, connections, caches
            single_rate = append_rate(app, single, 1)
            rates = {"single": single_rate, "batched": append_rate(app, batched, 100)}
        finally:
            app.close()
    return rates


# Rebuild


class History:
    """Whole job lifecycles, as Network would record them, built in memory and saved in batches.

    Aggregates are held here instead of loaded per command, so 100,000 events
    take seconds to store; the events are the same ones the commands record.
    """

    def __init__(self, app: Network, clients: int = 100, providers: int = 10):
        self.app = app
        self.counts: Counter[str] = Counter()
        self.jobs = 0
        self.external = Account(name=EXTERNAL, may_go_negative=True)
        self.fees = Account(name=FEES, may_go_negative=False)
        self.clients: dict[str, Account] = {}
        self.n_clients = clients
        gpus = [{"index": i, "model": "H100", "memory_mb": 81920, "uuid": ""} for i in range(8)]
        self.providers = [
            Provider(provider_id=f"bench-p{n}", region="eu-west",
                     price_per_gpu_hour_micro=PRICE_MICRO, gpus=gpus)
            for n in range(providers)
        ]
        self.earnings = [Account(name=provider_account(p.provider_id), may_go_negative=False)
                         for p in self.providers]
        self.dirty: dict[int, Aggregate] = {}

    def touch(self, *aggregates: Aggregate) -> None:
        for aggregate in aggregates:
            self.dirty[id(aggregate)] = aggregate

    def client(self, client_id: str) -> Account:
        if client_id not in self.clients:
            account = Account(name=client_account(client_id), may_go_negative=False)
            transfer(self.external, account, f"deposit:welcome:{client_id}",
                     STARTING_BALANCE_MICRO, "deposit")
            self.clients[client_id] = account
        return self.clients[client_id]

    def job_lifecycle(self) -> None:
        n, self.jobs = self.jobs, self.jobs + 1
        job_id = f"bench-job-{n}"
        client = self.client(f"bench-c{n % self.n_clients}")
        provider = self.providers[n % len(self.providers)]
        earnings = self.earnings[n % len(self.providers)]
        pid = provider.provider_id
        job = new_job(job_id, client.name.removeprefix("client:"))
        escrow = Account(name=escrow_account(job_id), may_go_negative=False)
        transfer(client, escrow, f"escrow:{job_id}", job.max_cost_micro, "escrow")
        job.record_escrow(job.max_cost_micro)
        job.queue(1)
        provider.reserve(job_id, [n % 8])
        job.record_allocation(1, pid, [n % 8], PRICE_MICRO)
        for step in ("inputs_staged", "execution_started", "execution_finished",
                     "outputs_uploaded"):
            job.record_step(step, 1, step_data(step, pid, job_id))
        job.record_verdict(True, True, "outputs verified")
        charged = min(cost_of_gpu_time(GPU_MS, PRICE_MICRO), job.max_cost_micro)
        fee = charged * FEE_BPS // 10_000
        transfer(escrow, earnings, f"pay:{job_id}", charged - fee, "payment for GPU time")
        transfer(escrow, self.fees, f"fee:{job_id}", fee, "protocol fee")
        transfer(escrow, client, f"refund:{job_id}", job.max_cost_micro - charged, "escrow refund")
        job.record_settlement(charged, charged - fee, fee, job.max_cost_micro - charged)
        provider.record_outcome(job_id, "success")
        provider.release(job_id)
        job.finish(True, "")
        self.touch(self.external, self.fees, client, provider, earnings, job, escrow)

    def save(self) -> int:
        aggregates = list(self.dirty.values())
        self.dirty.clear()
        n = 0
        for aggregate in aggregates:
            pending = len(aggregate.pending_events)
            self.counts[type(aggregate).__name__] += pending
            n += pending
        self.app.save(*aggregates)
        return n

    def store(self, events: int, jobs_per_save: int = 20) -> int:
        stored = 0
        while stored < events:
            for _ in range(jobs_per_save):
                self.job_lifecycle()
            stored += self.save()
        return stored


def check_views(db: ViewDB, history: History) -> str:
    """The rebuilt views agree with what was stored, or the figure means nothing."""

    def one(sql: str) -> int:
        return int(db.query(sql)[0]["n"])

    found = {
        "job_events": one("SELECT COUNT(*) AS n FROM job_events"),
        "succeeded_jobs": one("SELECT COUNT(*) AS n FROM jobs WHERE state = 'SUCCEEDED'"),
        "accounts": one("SELECT COUNT(*) AS n FROM accounts"),
        "balance_sum": one("SELECT COALESCE(SUM(balance_micro), 0) AS n FROM accounts"),
        "providers": one("SELECT COUNT(*) AS n FROM providers"),
    }
    expected = {
        "job_events": history.counts["Job"],
        "succeeded_jobs": history.jobs,
        "accounts": 2 + len(history.clients) + len(history.earnings) + history.jobs,
        "balance_sum": 0,
        "providers": len(history.providers),
    }
    if found != expected:
        raise RuntimeError(f"rebuilt views disagree with the log: {found} != {expected}")
    return ", ".join(f"{k}={v}" for k, v in found.items())


def measure_rebuild(kind: str, workdir: Path, events: int) -> tuple[float, int]:
    with event_store(kind, workdir) as settings:
        app = Network(env=settings.eventsourcing_env())
        db = ViewDB(settings)
        try:
            history = History(app)
            started = time.perf_counter()
            stored = history.store(events)
            say(f"  {kind}: stored {stored} events ({history.jobs} jobs) "
                f"in {time.perf_counter() - started:.1f} s; rebuilding")
            projector = Projector(app, db)
            started = time.perf_counter()
            applied = projector.rebuild()
            seconds = time.perf_counter() - started
            if applied != stored:
                raise RuntimeError(f"rebuild applied {applied} events, {stored} were stored")
            say(f"  {kind}: rebuilt in {seconds:.1f} s; views check: {check_views(db, history)}")
        finally:
            db.close()
            app.close()
    return applied / seconds, applied


# Subscriber latency


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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
  signUp(email: $e, password: $p, roles: ["client"]) { token user { clientId } } }"""


def sign_up(api_url: str) -> tuple[str, str]:
    """A client account for the bench: its session token and client id."""
    variables = {"e": f"bench-{uuid.uuid4().hex[:8]}@bench.local", "p": secrets.token_hex(12)}
    with httpx.Client(base_url=api_url, timeout=30) as http:
        body = http.post("/graphql", json={"query": SIGN_UP, "variables": variables}).json()
    if body.get("errors"):
        raise RuntimeError(f"signing the bench up failed: {body['errors']}")
    session = body["data"]["signUp"]
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


# Entry point


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench events", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, help="events stored for the rebuild (100000)")
    p.add_argument("--subscribers", type=int, default=100, help="websocket subscribers (100)")
    p.add_argument("--latency-events", type=int, help="events sent to the subscribers (200)")
    p.add_argument("--interval-ms", type=float, default=20.0, help="between those events (20)")
    p.add_argument("--single", type=int, help="events appended one per save (2000)")
    p.add_argument("--batched", type=int, help="events appended 100 per save (50000)")
    p.add_argument("--own-jobs", type=int, help="jobs, each followed by its own subscriber, "
                   "run by a real network (1000)")
    p.add_argument("--providers", type=int, default=2, help="its simulated providers (2)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per provider (8)")
    p.add_argument("--idle", type=int, help="idle subscriptions whose memory is measured (1000)")
    p.add_argument("--skip-postgres", action="store_true", help="SQLite only")
    p.add_argument("--only", action="append", choices=PARTS, help="run just this part")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests")
    args = p.parse_args(argv)
    quick = args.quick
    args.events = args.events or (2_000 if quick else 100_000)
    args.latency_events = args.latency_events or (20 if quick else 200)
    args.single = args.single or (100 if quick else 2_000)
    args.batched = args.batched or (1_000 if quick else 50_000)
    args.own_jobs = args.own_jobs or (20 if quick else 1_000)
    args.idle = args.idle or (50 if quick else 1_000)
    args.only = args.only or list(PARTS)
    return args


def check_postgres() -> None:
    settings = Settings()
    try:
        psycopg.connect(settings.postgres_conninfo(), connect_timeout=5).close()
    except psycopg.OperationalError as err:
        raise SystemExit(
            f"error: PostgreSQL at {settings.pg_host}:{settings.pg_port} is not reachable "
            f"({str(err).strip()}); start it or pass --skip-postgres"
        ) from None


def main(argv: list[str]) -> int:
    args = parse(argv)
    stores = ["sqlite"] if args.skip_postgres else ["sqlite", "postgres"]
    if "postgres" in stores and {"append", "rebuild"} & set(args.only):
        check_postgres()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpgpu-bench-events-") as tmp:
        workdir = Path(tmp)
        if "append" in args.only:
            for kind in stores:
                say(f"append: {kind}, {args.single} single and {args.batched} batched events")
                for mode, rate in measure_append(kind, workdir, args.single, args.batched).items():
                    emit("append_events_per_s", rate, "events/s", store=kind, mode=mode)
        if "rebuild" in args.only:
            for kind in stores:
                say(f"rebuild: {kind}, {args.events} events")
                rate, applied = measure_rebuild(kind, workdir, args.events)
                emit("rebuild_events_per_s", rate, "events/s", store=kind, events=applied)
        if "latency" in args.only:
            say(f"latency: {args.subscribers} subscribers, {args.latency_events} events")
            ms = measure_latency(workdir, args.subscribers, args.latency_events,
                                 args.interval_ms / 1000)
            say(f"  {len(ms)} deliveries: mean {sum(ms) / len(ms):.1f} ms, "
                f"max {max(ms):.1f} ms, over 100 ms: {sum(m > 100 for m in ms)}")
            for p in (50, 99):
                emit(f"subscriber_latency_p{p}_ms", percentile(ms, p), "ms",
                     subscribers=args.subscribers, events=args.latency_events,
                     interval_ms=args.interval_ms)
        if "own_jobs" in args.only:
            say(f"own jobs: {args.own_jobs} jobs, each followed by its own subscriber")
            own = measure_own_jobs(workdir, args)
            ms = own.ms
            say(f"  {len(ms)} deliveries: mean {sum(ms) / len(ms):.1f} ms, max {max(ms):.1f} ms; "
                f"{own.jobs_per_s:.1f} jobs/s; API CPU {own.api_cpu_ms_per_event:.2f} ms "
                f"per event delivered")
            for p in (50, 99):
                emit(f"own_job_latency_p{p}_ms", percentile(ms, p), "ms",
                     subscribers=args.own_jobs, most_live=own.most_live, events=len(ms),
                     jobs_per_s=round(own.jobs_per_s, 1),
                     api_cpu_ms_per_event=round(own.api_cpu_ms_per_event, 2))
        if "idle" in args.only:
            say(f"idle: {args.idle} subscriptions, each on its own job and websocket")
            per = measure_idle(workdir, args.idle)
            emit("idle_subscription_kib", per / 1024, "KiB", subscribers=args.idle,
                 websocket_each=True)
    say(f"done in {time.perf_counter() - started:.0f} s")
    return 0
