"""`python -m bench pipeline`: our job pipeline against plain Temporal, on one dev server.

Figures, one JSON line each on stdout (progress and the breakdowns go to stderr):

- pipeline_jobs_per_s: `--jobs` real jobs (command `true`, 1 GPU, no inputs or
  outputs) submitted at once through the GraphQL API (`submitJob`, at most
  `--submitters` requests in flight, `--clients` signed-up clients taking turns),
  on `--providers` simulated providers with `--gpus` each, enough for every job at
  once, so capacity is not the limit. Jobs over the time from the first submit
  request to the last job workflow's close (its WorkflowExecutionCompleted event
  time); every job must have SUCCEEDED.
- baseline_workflows_per_s: as many plain Temporal workflows, each running one
  no-op activity per activity a real job ran, in the same order and of the same
  kind: the control ones on a control task queue (local activities where ours
  were local), the GPU ones (stage, execute, upload) on the queue of a second
  worker process per provider, each workflow on the provider
  the matching real job had. The activity plan is read from a warm-up job's
  history. Same worker settings as ours: sync activities in a thread pool of as
  many threads as slots, the control worker's slots (activities/control.py
  CONTROL_SLOTS: BUSY_SLOTS for the store steps plus WAITING_SLOTS for jobs
  waiting for GPUs) on the control queue, GPUs + 2 on each provider's. Started with
  `start_workflow` from this process, at most `--submitters` at a time, and
  timed the same way (first start request to the last close).
  Where our job ran a step as a local activity (workflows/job.py, LOCAL_CONTROL_STEPS),
  this baseline runs a regular one: the issue's "plain Temporal workflow with as many
  no-op activities as JobWorkflow has steps". A second baseline runs local no-op
  activities where ours were local (like for like); its rate is a label of the ratio.
- ratio_to_temporal: pipeline_jobs_per_s / baseline_workflows_per_s; labels
  same_kinds_baseline_per_s and same_kinds_ratio for the like-for-like baseline.
- submit_to_running_p50_ms / _p99_ms: jobs submitted at a steady `--rate` per
  second for `--seconds`; for each, the job's ExecutionStarted event time (the
  `at` the control worker stamped on it, read from the jobEvents subscription)
  minus the wall-clock time just before its submitJob request was sent. A
  subscription still silent `STALL_S` after its job closed counts as stalled
  (label subscriptions_stalled); that job's times come from its `events` field.

Labels say what each throughput cost: CPU ms per job or workflow over every
process involved (Temporal's, ours, this one's), and the share of the machine's
cores those processes got; on a shared machine that share, not the code, often
sets the throughput. On stderr: CPU per process, each activity's queue wait and
running time and the history's length (from Temporal's histories), and the time
from the submit request to each job event. `--profile DIR` runs the API, the
control worker and the providers under cProfile (CPU time per thread) for the
throughput part and prints their top costs; its figures are labelled profiled.

Order: Temporal dev server (as `gpgpu up` starts it); our network (API,
control worker, providers); warm-up jobs; throughput; latency; the network
stops; the baseline's workers; warm-up; baseline throughput. Adaptive checks
and canaries are off, so a job is one plain run (as in the end-to-end tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
import os
import pstats
import runpy
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio import activity, workflow

# This module also defines the baseline's workflow: the sandbox imports it anew for every
# run, so nothing heavy may be imported here except through.
with workflow.unsafe.imports_passed_through():
    import httpx
    from temporalio.api.enums.v1 import EventType
    from temporalio.api.history.v1 import HistoryEvent
    from temporalio.client import Client, WorkflowHandle
    from temporalio.worker import Worker
    from websockets.asyncio.client import connect
    from websockets.typing import Subprotocol

    from client.subscription import SUBPROTOCOL, JobEventsSession
    from infra.settings import Settings
    from ops.devstack import Stack, agent_env, free_port, temporal_dev_args, wait_for_http
    from workflows.contracts import GPU_STEPS

T = TypeVar("T")

NOOP = "bench_noop"
LOCAL = "local"  # a step that ran as a local activity (a marker in the history)
LOCAL_ACTIVITY_MARKER = "core_local_activity"
PLAIN_CONTROL_QUEUE = "plain-control"
SPEC = {
    "name": "noop", "command": ["true"], "resources": {"gpus": 1},
    "max_price_per_gpu_hour": "2.5", "timeout": "1m",
}
SUBMIT = """mutation($spec: JSON!) { submitJob(spec: $spec) {
  __typename ... on JobSubmitted { job { id } } ... on SpecRejected { errors { field message } }
} }"""
PROVIDERS = "{ providers { providerId status } }"
SIGN_UP = """mutation($e: String!, $p: String!, $r: [String!]!) {
  signUp(email: $e, password: $p, roles: $r) { token } }"""
CREATE_KEY = """mutation($n: String!, $s: [String!]!) {
  createApiKey(name: $n, scopes: $s) { key } }"""
PASSWORD = "bench password"
ENOUGH = 10.0  # seconds to wait per job, at least, before a phase counts as stuck
STALL_S = 15.0  # a subscription silent this long after its job closed has stalled


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    line = {"bench": "pipeline", "metric": metric, "value": round(value, 3), "unit": unit,
            **labels}
    print(json.dumps(line), flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The baseline: a plain workflow of no-op activities, and its workers


@dataclass
class PlainInput:
    kinds: list[str]  # "control", "gpu" or "local" per activity, in a real job's order
    gpu_task_queue: str


@activity.defn(name=NOOP)
def noop(step: int) -> int:
    return step


@workflow.defn(name="BenchPlainWorkflow")
class PlainWorkflow:
    @workflow.run
    async def run(self, inp: PlainInput) -> int:
        control = workflow.info().task_queue
        for n, kind in enumerate(inp.kinds):
            if kind == LOCAL:  # as ours: a local activity where the real job ran one
                await workflow.execute_local_activity(
                    NOOP, n, start_to_close_timeout=timedelta(seconds=60)
                )
                continue
            await workflow.execute_activity(
                NOOP, n, task_queue=inp.gpu_task_queue if kind == "gpu" else control,
                start_to_close_timeout=timedelta(seconds=60),
            )
        return len(inp.kinds)


async def serve_worker(address: str, task_queue: str, slots: int, workflows: bool,
                       stop: asyncio.Event) -> None:
    client = await Client.connect(address)
    with ThreadPoolExecutor(max_workers=slots) as executor:
        worker = Worker(
            client, task_queue=task_queue, workflows=[PlainWorkflow] if workflows else [],
            activities=[noop], activity_executor=executor, max_concurrent_activities=slots,
        )
        async with worker:
            await stop.wait()


def worker_main(argv: list[str]) -> int:
    """`python -m bench pipeline _worker ADDRESS QUEUE SLOTS [--workflows]`: a baseline worker."""
    from infra.process import run_service

    address, queue, slots = argv[0], argv[1], int(argv[2])
    run_service(lambda stop: serve_worker(address, queue, slots, "--workflows" in argv, stop))
    return 0  # run_service exits the process itself


# What Temporal's histories say about each run


@dataclass
class Step:
    name: str
    queue: str
    scheduled: float
    started: float = 0.0
    closed: float = 0.0


@dataclass
class Run:
    """One workflow run as its history tells it: activities and workflow tasks, in seconds."""

    started: float
    closed: float
    steps: list[Step] = field(default_factory=list)
    tasks: list[tuple[float, float, float]] = field(default_factory=list)  # sched, start, done
    events: Counter[str] = field(default_factory=Counter)  # history events by type
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return ["gpu" if s.name in GPU_STEPS else LOCAL if s.queue == LOCAL else "control"
                for s in self.steps]

    @property
    def gpu_queue(self) -> str:
        # GPU steps are assignments on the control queue; the baseline gives each a queue.
        return next((s.queue for s in self.steps if s.name in GPU_STEPS), "")


def _seconds(event: HistoryEvent) -> float:
    return float(event.event_time.ToMicroseconds()) / 1e6


def parse_history(events: list[HistoryEvent]) -> Run:
    run = Run(_seconds(events[0]), _seconds(events[-1]))
    by_id: dict[int, Step] = {}
    task: list[float] = []
    for e in events:
        t = _seconds(e)
        run.events[EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")] += 1
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            a = e.activity_task_scheduled_event_attributes
            by_id[e.event_id] = Step(a.activity_type.name, a.task_queue.name, t)
            run.steps.append(by_id[e.event_id])
        elif (e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
              and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER):
            # A local activity: run inside a workflow task, so no queue wait of its own.
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            run.steps.append(Step(json.loads(data)["activity_type"], LOCAL, t, t, t))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            by_id[e.activity_task_started_event_attributes.scheduled_event_id].started = t
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            by_id[e.activity_task_completed_event_attributes.scheduled_event_id].closed = t
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            task = [t]
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and task:
            task.append(t)
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and len(task) == 2:
            run.tasks.append((task[0], task[1], t))
            task = []
    return run


async def bounded(items: list[T], limit: int, fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with gate:
            return await fn(item)

    return await asyncio.gather(*(one(i) for i in items))


async def finished_runs(temporal: Client, workflow_ids: list[str], timeout_s: float,
                        check: Callable[[], None]) -> list[Run]:
    """Wait for every workflow to close (`check` raises when a process they need died),
    then read each one's history."""

    async def result(wid: str) -> Any:
        return await temporal.get_workflow_handle(wid).result()

    everything = asyncio.ensure_future(asyncio.gather(*(result(w) for w in workflow_ids)))
    deadline = time.monotonic() + timeout_s
    try:
        while not everything.done():
            await asyncio.wait([everything], timeout=1.0)
            check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(workflow_ids)} workflows did not finish in "
                                   f"{timeout_s:.0f} s")
    finally:
        everything.cancel()
    results = everything.result()

    async def history(wid: str) -> Run:
        handle: WorkflowHandle[Any, Any] = temporal.get_workflow_handle(wid)
        return parse_history(list((await handle.fetch_history()).events))

    runs: list[Run] = await bounded(workflow_ids, 8, history)
    for run, res in zip(runs, results, strict=True):
        run.result = res if isinstance(res, dict) else {"value": res}
    return runs


def breakdown(what: str, runs: list[Run]) -> None:
    """Where a run's time goes, per activity: waiting in its queue, then running."""
    waits: dict[tuple[str, str], list[float]] = defaultdict(list)
    runs_ms: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in runs:
        for s in r.steps:
            key = (s.name, "gpu" if s.name in GPU_STEPS else s.queue)
            waits[key].append((s.started - s.scheduled) * 1000)
            runs_ms[key].append((s.closed - s.started) * 1000)
    say(f"  {what}: mean ms per activity (queue wait / running), over {len(runs)} runs")
    for key, w in waits.items():
        say(f"    {key[0]:<18} {key[1]:<14} {statistics.mean(w):8.1f} / "
            f"{statistics.mean(runs_ms[key]):8.1f}")
    total = statistics.mean(r.closed - r.started for r in runs) * 1000
    act_wait = statistics.mean(sum(s.started - s.scheduled for s in r.steps) for r in runs) * 1000
    act_run = statistics.mean(sum(s.closed - s.started for s in r.steps) for r in runs) * 1000
    wft_wait = statistics.mean(sum(t[1] - t[0] for t in r.tasks) for r in runs) * 1000
    wft_run = statistics.mean(sum(t[2] - t[1] for t in r.tasks) for r in runs) * 1000
    tasks = statistics.mean(len(r.tasks) for r in runs)
    say(f"    per run: {total:.0f} ms open; activities {act_wait:.0f} waiting + {act_run:.0f} "
        f"running; {tasks:.0f} workflow tasks {wft_wait:.0f} waiting + {wft_run:.0f} running")
    events: Counter[str] = sum((r.events for r in runs), Counter())
    say(f"    history events per run: {events.total() / len(runs):.1f}; of which "
        + ", ".join(f"{name.lower()} {n / len(runs):.1f}" for name, n in events.most_common()
                    if not name.startswith(("ACTIVITY_TASK", "WORKFLOW_TASK"))))


# The processes


def machine_busy() -> tuple[float, float]:
    """CPU seconds this machine was busy and in all, so far, over every core (Linux)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = ticks[3] + ticks[4]  # idle, iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class Cpu:
    """CPU seconds each watched process used from now until `report`, and the whole machine."""

    def __init__(self, pids: dict[str, int]):
        self.pids = {**pids, "bench": os.getpid()}
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.wall = time.perf_counter()
        self.machine = machine_busy()

    def report(self, per: int, what: str) -> tuple[float, float]:
        """Says where the CPU went; returns our processes' CPU ms per `what` and the share
        of the machine's cores they had."""
        wall = time.perf_counter() - self.wall
        used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        groups: dict[str, float] = defaultdict(float)
        for name, seconds in used.items():
            groups["providers" if name.startswith(("provider", "plain-gpu")) else name] += seconds
        total = sum(groups.values())
        parts = ", ".join(f"{k} {v / per * 1000:.1f}" for k, v in
                          sorted(groups.items(), key=lambda kv: -kv[1]))
        busy, all_ = (b - a for a, b in zip(self.machine, machine_busy(), strict=True))
        share = total / wall / (os.cpu_count() or 1)
        say(f"  CPU ms per {what}: {parts}; total {total / per * 1000:.1f} "
            f"({share * 100:.0f}% of {os.cpu_count()} cores over {wall:.1f} s; "
            f"the machine was {busy / max(all_, 1e-9) * 100:.0f}% busy)")
        return total / per * 1000, share


class Processes:
    """Child processes in groups that stop separately; the Temporal server outlives the rest."""

    def __init__(self, home: Path):
        self.home = home
        self.temporal_address = f"127.0.0.1:{free_port()}"
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.settings = Settings(
            home=home, event_store="sqlite", api_host="127.0.0.1", api_port=self.api_port,
            api_url=self.api_url, temporal_address=self.temporal_address,
        )
        self.env = {
            "GPGPU_EVENT_STORE": "sqlite", "GPGPU_API_HOST": "127.0.0.1",
            "GPGPU_API_PORT": str(self.api_port), "GPGPU_API_URL": self.api_url,
            "GPGPU_TEMPORAL_ADDRESS": self.temporal_address, "GPGPU_LOG_LEVEL": "WARNING",
            "GPGPU_ADAPTIVE_CHECKS": "false", "GPGPU_CANARIES": "false",
            # Sign-up gives nothing by default; the bench's clients open with 100 credits.
            "GPGPU_STARTING_BALANCE_MICRO": "100000000",
        }
        self.stacks: list[Stack] = []

    def stack(self) -> Stack:
        stack = Stack(self.settings, self.env)
        self.stacks.append(stack)
        return stack

    def start_temporal(self) -> None:
        """As `gpgpu up` starts it (SQLite file, WAL, the jobs' search attributes), headless."""
        port = int(self.temporal_address.rpartition(":")[2])
        self.stack().spawn_listening("temporal", lambda: temporal_dev_args(
            port, self.home / "temporal.db",
        ), "127.0.0.1", port, "the Temporal dev server")  # fmt: skip

    def pids(self) -> dict[str, int]:
        return {c.name: c.proc.pid for s in self.stacks for c in s.children
                if c.proc.poll() is None}

    def check_alive(self) -> None:
        for s in self.stacks:
            for c in s.children:
                if c.proc.poll() is not None:
                    raise RuntimeError(f"{c.name} exited with code {c.proc.returncode}")

    def stop(self, stack: Stack) -> None:
        interrupt = signal.getsignal(signal.SIGINT)
        try:
            stack.stop(quiet=True)
        finally:
            signal.signal(signal.SIGINT, interrupt)  # Stack.stop ignores Ctrl-C from then on
            self.stacks.remove(stack)

    def stop_all(self) -> None:
        for stack in reversed(list(self.stacks)):
            self.stop(stack)

    def log_tails(self) -> None:
        for log in sorted((self.home / "logs").glob("*.log")):
            text = log.read_text(errors="replace").strip()
            if text:
                say(f"--- {log.name} ---\n{text[-2000:]}")


# Profiles: `--profile DIR` runs the API, the control worker and the providers under cProfile


class _Snapshot:
    """What pstats.Stats loads: a profiler's figures so far, without stopping it."""

    def __init__(self, profile: cProfile.Profile):
        profile.snapshot_stats()
        self.stats = dict(profile.stats)

    def create_stats(self) -> None:
        pass


def profiled_main(argv: list[str]) -> int:
    """`python -m bench pipeline _profiled OUT MODULE ARGS...`: run `python -m MODULE ARGS`
    with a CPU profiler (thread CPU time) on every thread; SIGUSR1 clears what it has seen
    so far, SIGUSR2 writes it to OUT."""
    out, module = Path(argv[0]), argv[1]
    profiles: list[cProfile.Profile] = []

    def new_profile() -> cProfile.Profile:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        return profile

    def on_thread_start(*_: object) -> None:  # the thread's own profiler replaces this hook
        new_profile().enable()

    def clear(*_: object) -> None:
        for profile in list(profiles):
            profile.clear()

    def dump(*_: object) -> None:
        stats = pstats.Stats()
        for profile in list(profiles):
            snapshot = _Snapshot(profile)
            if snapshot.stats:
                stats.add(snapshot)  # type: ignore[arg-type]
        tmp = out.with_suffix(".tmp")
        stats.dump_stats(tmp)
        tmp.replace(out)

    signal.signal(signal.SIGUSR1, clear)
    signal.signal(signal.SIGUSR2, dump)
    threading.setprofile(on_thread_start)
    sys.argv = [module, *argv[2:]]
    new_profile().enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


def profile_report(name: str, paths: list[Path], top: int = 12) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    stats = pstats.Stats(*(str(p) for p in paths))
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in table.values()) or 1e-9

    def where(func: tuple[str, int, str]) -> str:
        filename, line, fn = func
        short = filename.replace(root + "/", "")
        short = short.split("site-packages/")[-1]
        return f"{fn} ({short}:{line})" if line else fn

    say(f"  {name}: {total:.1f} s of CPU; most own time:")
    for func, row in sorted(table.items(), key=lambda kv: -kv[1][2])[:top]:
        say(f"    {row[2]:7.2f} s {row[2] / total * 100:5.1f}%  {where(func)}")
    ours = [(f, r) for f, r in table.items() if f[0].startswith(root)
            and "/.venv/" not in f[0] and "/bench/" not in f[0]]
    say(f"  {name}: our functions, most time inside them (with what they call):")
    for func, row in sorted(ours, key=lambda kv: -kv[1][3])[:top]:
        say(f"    {row[3]:7.2f} s {row[3] / total * 100:5.1f}%  {where(func)}  x{row[1]}")


# Our pipeline


@dataclass
class Options:
    jobs: int
    providers: int
    gpus: int
    clients: int
    submitters: int
    rate: float
    seconds: float
    warmup: int
    profile: Path | None = None
    control_workers: int = 1


def replicas(name: str, n: int) -> list[str]:
    """Process names for n copies: the first keeps the name, then name-2, name-3, ..."""
    return [name] + [f"{name}-{k}" for k in range(2, n + 1)]


class Pipeline:
    def __init__(self, procs: Processes, temporal: Client, opts: Options):
        self.procs, self.temporal, self.opts = procs, temporal, opts
        self.http = httpx.AsyncClient(base_url=procs.api_url, timeout=60)
        self.tokens: list[str] = []  # the clients' session tokens, taking turns
        self.submitted = 0

    async def close(self) -> None:
        await self.http.aclose()

    async def gql(self, query: str, token: str | None, **variables: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = await self.http.post("/graphql", json={"query": query, "variables": variables},
                                 headers=headers)
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def next_client(self) -> str:
        return self.tokens[self.submitted % len(self.tokens)]

    async def submit(self) -> str:
        token = self.next_client()
        self.submitted += 1
        result = (await self.gql(SUBMIT, token, spec=SPEC))["submitJob"]
        if result["__typename"] != "JobSubmitted":
            raise RuntimeError(f"the job was refused: {result}")
        return str(result["job"]["id"])

    async def start(self) -> list[str]:
        """The API, the control worker and the providers, as `gpgpu up` starts them, and
        the accounts: `--clients` clients, and one provider owner whose API key the
        providers run with."""
        stack = self.procs.stack()

        def spawn(name: str, *module: str) -> None:
            # A provider's agent is given nothing of Temporal: it speaks only to the API.
            env = None
            if module[0] == "worker_gpu":
                env = agent_env(stack.env, stack.env.get("GPGPU_API_KEY", ""))
            if self.opts.profile is None:
                stack.spawn(name, [sys.executable, "-m", *module], env=env)
            else:
                stack.spawn(name, [sys.executable, "-m", "bench", "pipeline", "_profiled",
                                   str(self.opts.profile / f"{name}.prof"), *module], env=env)

        spawn("api", "api")
        for name in replicas("control-worker", self.opts.control_workers):
            spawn(name, "activities.worker")
        await asyncio.to_thread(wait_for_http, f"{self.procs.api_url}/healthz", 60, "the API")
        for n in range(self.opts.clients):
            self.tokens.append(await self.sign_up(f"client-{n}", "client"))
        owner = await self.sign_up("providers", "provider")
        key = await self.gql(CREATE_KEY, owner, n="bench", s=["provider"])
        stack.env["GPGPU_API_KEY"] = key["createApiKey"]["key"]
        ids = [f"provider-{n}" for n in range(self.opts.providers)]
        for pid in ids:
            spawn(pid, "worker_gpu", "--provider-id", pid, "--simulate",
                  f"{self.opts.gpus}xH100:80", "--price", "2.5",
                  "--scratch", str(self.procs.home / "providers" / pid))
        return ids

    async def sign_up(self, name: str, role: str) -> str:
        data = await self.gql(SIGN_UP, None, e=f"{name}@bench.test", p=PASSWORD, r=[role])
        return str(data["signUp"]["token"])

    def profiles(self, sig: signal.Signals) -> None:
        """Tell every profiled process to clear (SIGUSR1) or write (SIGUSR2) its profile."""
        if self.opts.profile is None:
            return
        for name, pid in self.procs.pids().items():
            if name == "api" or name.startswith(("control-worker", "provider-")):
                os.kill(pid, sig)

    def report_profiles(self) -> None:
        if self.opts.profile is None:
            return
        self.profiles(signal.SIGUSR2)
        names = [n for n in self.procs.pids()
                 if n == "api" or n.startswith(("control-worker", "provider-"))]
        paths = {n: self.opts.profile / f"{n}.prof" for n in names}
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in paths.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the profiled processes did not write their profiles")
            time.sleep(0.2)
        say(f"profiles (CPU time per thread, cProfile; files under {self.opts.profile}):")
        profile_report("control-worker", [paths["control-worker"]])
        profile_report("api", [paths["api"]])
        profile_report("providers", [p for n, p in paths.items() if n.startswith("provider-")])

    async def wait_online(self, ids: list[str], timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.procs.check_alive()
            data = await self.gql(PROVIDERS, self.tokens[0])
            if set(ids) <= {p["providerId"] for p in data["providers"]
                            if p["status"] == "online"}:
                return
            await asyncio.sleep(0.3)
        raise RuntimeError(f"providers {ids} did not come online")

    async def batch(self, n: int) -> tuple[float, list[Run]]:
        """Submit n jobs at once; the time of the first request and each job's run."""
        first = time.time()
        job_ids = await bounded(list(range(n)), self.opts.submitters, lambda _: self.submit())
        say(f"  submitted {n} jobs in {time.time() - first:.1f} s")
        runs = await finished_runs(self.temporal, [f"job-{j}" for j in job_ids],
                                   max(120.0, ENOUGH * n), self.procs.check_alive)
        failed = [r.result for r in runs if r.result.get("state") != "SUCCEEDED"]
        if failed:
            raise RuntimeError(f"{len(failed)} of {n} jobs did not succeed, e.g. {failed[0]}")
        return first, runs

    async def time_to_running(self) -> Timed:
        """Submit one job and follow it over jobEvents until ExecutionStarted.

        Should the subscription stay silent for `STALL_S` after the job's workflow closed,
        it counts as stalled, and the event times come from the job's `events` instead."""
        token = self.next_client()
        sent = time.time()
        job_id = await self.submit()
        timed = Timed(job_id, sent, {"submit answered": time.time()})
        follow = asyncio.ensure_future(self.follow(token, timed))
        closed = asyncio.ensure_future(self.closed(job_id))
        try:
            await asyncio.wait({follow, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not follow.done():
                await asyncio.wait({follow}, timeout=STALL_S)
            if not follow.done():
                timed.stalled = True
                query = "query($id: ID!) { job(id: $id) { events { type at } } }"
                job = (await self.gql(query, token, id=job_id))["job"]
                for event in job["events"]:
                    timed.stamp(event["type"], event["at"])
            else:
                follow.result()
        finally:
            follow.cancel()
            closed.cancel()
        if "ExecutionStarted" not in timed.stamps:
            raise RuntimeError(f"job {job_id} ended without ExecutionStarted: {timed.stamps}")
        return timed

    async def follow(self, token: str, timed: Timed) -> None:
        session = JobEventsSession(token, timed.job_id, after=0)
        url = f"ws://127.0.0.1:{self.procs.api_port}/graphql"
        async with connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], open_timeout=30,
                           ping_interval=None) as ws:
            await ws.send(session.init_message())
            async for raw in ws:
                arrived = time.time()
                step = session.handle(raw)
                if step.reply:
                    await ws.send(step.reply)
                if step.event is not None:
                    timed.stamp(step.event.type, step.event.at)
                events = len(timed.stamps) - 1
                timed.seen = f"{'acked' if session.acked else 'no ack'}, {events} events"
                if "ExecutionStarted" in timed.stamps:
                    timed.arrived = arrived
                    return
                if step.done:
                    return

    async def closed(self, job_id: str) -> None:
        with contextlib.suppress(Exception):  # how it ended is the batch's business
            await self.temporal.get_workflow_handle(f"job-{job_id}").result()

    async def steady(self, rate: float, seconds: float) -> list[Timed]:
        n = max(1, round(rate * seconds))
        begin = time.monotonic() + 0.2
        tasks = []
        for i in range(n):
            await asyncio.sleep(max(0.0, begin + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(self.time_to_running()))
        return await asyncio.wait_for(asyncio.gather(*tasks), max(120.0, ENOUGH * n))


@dataclass
class Timed:
    """One job of the latency run: when its submit request left, and its events' times."""

    job_id: str
    sent: float
    stamps: dict[str, float]  # event type (or "submit answered") -> time.time()
    arrived: float | None = None  # when ExecutionStarted came over the subscription
    stalled: bool = False  # the subscription never delivered it
    seen: str = "nothing"  # what the subscription had delivered so far

    def stamp(self, event_type: str, at: str) -> None:
        self.stamps.setdefault(event_type, datetime.fromisoformat(at).timestamp())

    @property
    def ms(self) -> float:
        return (self.stamps["ExecutionStarted"] - self.sent) * 1000


def jobs_per_s(first: float, runs: list[Run]) -> float:
    return len(runs) / (max(r.closed for r in runs) - first)


@dataclass
class Measured:
    """A throughput, what it cost (CPU ms per job or workflow, every process of ours and
    Temporal's), the share of the machine's cores it got, and the runs."""

    per_s: float
    cpu_ms: float
    share: float
    runs: list[Run]


async def measure_pipeline(procs: Processes, temporal: Client,
                           opts: Options) -> tuple[Measured, list[Run], list[Timed]]:
    """Throughput and time to running of our pipeline; the warm-up runs tell the plan."""
    pipeline = Pipeline(procs, temporal, opts)
    stack_count = len(procs.stacks)
    try:
        ids = await pipeline.start()
        await pipeline.wait_online(ids)
        say(f"  {len(ids)} providers online with {opts.gpus} GPUs each; "
            f"{opts.warmup} warm-up jobs")
        _, warm = await pipeline.batch(opts.warmup)
        say(f"  a job runs {len(warm[0].steps)} activities: "
            + ", ".join(f"{s.name}{'@gpu' if k == 'gpu' else ''}"
                        for s, k in zip(warm[0].steps, warm[0].kinds, strict=True)))
        say(f"throughput: {opts.jobs} jobs at once, {opts.submitters} submit requests in flight")
        pipeline.profiles(signal.SIGUSR1)
        cpu = Cpu(procs.pids())
        first, runs = await pipeline.batch(opts.jobs)
        rate = jobs_per_s(first, runs)
        self_cpu = cpu.report(opts.jobs, "job")
        say(f"  {rate:.2f} jobs/s")
        breakdown("our jobs", runs)
        pipeline.report_profiles()
        say(f"latency: {opts.rate:g} jobs/s for {opts.seconds:g} s")
        cpu = Cpu(procs.pids())
        timed = await pipeline.steady(opts.rate, opts.seconds)
        await finished_runs(temporal, [f"job-{t.job_id}" for t in timed],
                            max(120.0, ENOUGH * len(timed)), procs.check_alive)
        cpu.report(len(timed), "job")
        arrived = [(t.arrived - t.sent) * 1000 for t in timed if t.arrived is not None]
        if arrived:
            say(f"  ExecutionStarted arrived over the subscription p50 "
                f"{percentile(arrived, 50):.0f} ms, p99 {percentile(arrived, 99):.0f} ms "
                f"after the submit request")
        stalled = [t for t in timed if t.stalled]
        if stalled:
            say(f"  {len(stalled)} of {len(timed)} subscriptions never delivered "
                f"ExecutionStarted (times taken from the job's events instead): "
                + "; ".join(f"{t.job_id} after {t.seen}" for t in stalled[:5]))
        stages: dict[str, list[float]] = defaultdict(list)
        for t in timed:
            for name, at in t.stamps.items():
                stages[name].append((at - t.sent) * 1000)
        say("  median ms from the submit request to each event: " + ", ".join(
            f"{name} {statistics.median(ms):.0f}"
            for name, ms in sorted(stages.items(), key=lambda kv: statistics.median(kv[1]))))
        return Measured(rate, *self_cpu, runs), warm, timed
    finally:
        await pipeline.close()
        while len(procs.stacks) > stack_count:
            procs.stop(procs.stacks[-1])


# The baseline


def plain_kinds(kinds: list[str]) -> list[str]:
    """The plain baseline's steps: a regular activity on the control queue for each local one."""
    return ["control" if k == LOCAL else k for k in kinds]


async def measure_baseline(procs: Processes, temporal: Client, opts: Options, kinds: list[str],
                           gpu_queues: list[str], tag: str) -> Measured:
    # Slots as infra/temporal.py's control worker has them and worker_gpu/agent.py's (GPUs
    # + 2). Imported here: the sandbox imports this module anew for every baseline run.
    from activities.control import CONTROL_SLOTS

    stack = procs.stack()
    try:
        me = [sys.executable, "-m", "bench", "pipeline", "_worker", procs.temporal_address]
        for name in replicas("plain-control", opts.control_workers):
            stack.spawn(name, [*me, PLAIN_CONTROL_QUEUE, str(CONTROL_SLOTS), "--workflows"])
        for queue in sorted(set(gpu_queues)):
            stack.spawn(f"plain-{queue}", [*me, f"plain-{queue}", str(opts.gpus + 2)])
        started = 0

        async def start(queue: str) -> str:
            nonlocal started
            started += 1
            wid = f"plain-{tag}-{started}"
            await temporal.start_workflow(
                PlainWorkflow.run, PlainInput(kinds, f"plain-{queue}"), id=wid,
                task_queue=PLAIN_CONTROL_QUEUE,
            )
            return wid

        async def batch(queues: list[str]) -> tuple[float, list[Run]]:
            first = time.time()
            ids = await bounded(queues, opts.submitters, start)
            return first, await finished_runs(temporal, ids, max(120.0, ENOUGH * len(ids)),
                                              procs.check_alive)

        warm = sorted(set(gpu_queues))
        await batch(warm * max(1, math.ceil(opts.warmup / len(warm))))  # also: workers poll
        procs.check_alive()
        say(f"baseline ({tag}): {len(gpu_queues)} workflows of {len(kinds)} no-op activities "
            f"({kinds.count('gpu')} on {len(warm)} provider queues, {kinds.count(LOCAL)} local) "
            "at once")
        cpu = Cpu(procs.pids())
        first, runs = await batch(gpu_queues)
        rate = jobs_per_s(first, runs)
        self_cpu = cpu.report(len(runs), "workflow")
        say(f"  {rate:.2f} workflows/s")
        breakdown("plain workflows", runs)
        return Measured(rate, *self_cpu, runs)
    finally:
        procs.stop(stack)


# Entry point


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, help="jobs (and baseline workflows) at once (200)")
    p.add_argument("--providers", type=int, help="simulated providers (4)")
    p.add_argument("--gpus", type=int, help="GPUs per provider (64, at most; quick: 16)")
    p.add_argument("--clients", type=int, default=10, help="clients the jobs take turns (10)")
    p.add_argument("--submitters", type=int, default=16, help="requests in flight (16)")
    p.add_argument("--rate", type=float, default=5.0, help="jobs/s for the latency (5)")
    p.add_argument("--seconds", type=float, help="how long to submit at that rate (60)")
    p.add_argument("--control-workers", type=int, default=1,
                   help="control worker processes, ours and the baseline's (1, as `gpgpu up`)")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="profile the API, control worker and providers during the throughput "
                   "run (cProfile: slower; the figures are labelled profiled)")
    args = p.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or (20 if quick else 200)
    args.providers = args.providers or (2 if quick else 4)
    args.gpus = args.gpus or (16 if quick else 64)
    args.seconds = args.seconds or (4.0 if quick else 60.0)
    args.warmup = 2 if quick else 6
    return args


async def run(args: argparse.Namespace, home: Path) -> None:
    opts = Options(args.jobs, args.providers, args.gpus, args.clients, args.submitters,
                   args.rate, args.seconds, args.warmup, args.profile, args.control_workers)
    if opts.profile is not None:
        opts.profile = opts.profile.resolve()
        opts.profile.mkdir(parents=True, exist_ok=True)
        for old in opts.profile.glob("*.prof"):
            old.unlink()
    procs = Processes(home)
    try:
        procs.start_temporal()
        # Our jobs' payloads are encrypted (infra/payload_codec.py): read their results with
        # the network's key. The baseline's plain workflows go through a plain client.
        temporal = await Client.connect(procs.temporal_address,
                                        data_converter=procs.settings.temporal_converter())
        plain = await Client.connect(procs.temporal_address)
        say(f"pipeline: our network on {opts.providers} providers")
        ours, warm, timed = await measure_pipeline(procs, temporal, opts)
        kinds = warm[0].kinds
        other = [r for r in ours.runs if r.kinds != kinds]
        if other:  # e.g. a provider counted as lost under load, and a run elsewhere
            say(f"  {len(other)} of {len(ours.runs)} jobs ran other activities than the "
                f"warm-up's, e.g. {', '.join(s.name for s in other[0].steps)}")
        queues = [r.gpu_queue for r in ours.runs]
        # As the issue defines it: one plain activity per step. Then like for like: a local
        # activity where ours ran one, which shows what our own work per step costs.
        base = await measure_baseline(procs, plain, opts, plain_kinds(kinds), queues, "plain")
        same = await measure_baseline(procs, plain, opts, kinds, queues, "same-kinds")
    except BaseException:
        procs.log_tails()
        raise
    finally:
        procs.stop_all()
    marks: dict[str, Any] = {"profiled": True} if opts.profile else {}
    plan = {"activities": len(kinds), "gpu_activities": kinds.count("gpu"),
            "local_activities": kinds.count(LOCAL)}
    emit("baseline_workflows_per_s", base.per_s, "workflows/s", workflows=opts.jobs, **plan,
         baseline_activities="regular",
         cpu_ms_per_workflow=round(base.cpu_ms, 1), share_of_cores=round(base.share, 2))
    emit("pipeline_jobs_per_s", ours.per_s, "jobs/s", jobs=opts.jobs, providers=opts.providers,
         gpus_per_provider=opts.gpus, cpu_ms_per_job=round(ours.cpu_ms, 1),
         share_of_cores=round(ours.share, 2), **marks)
    emit("ratio_to_temporal", ours.per_s / base.per_s, "ratio", jobs=opts.jobs, goal=0.8,
         cpu_ratio=round(base.cpu_ms / ours.cpu_ms, 3),
         same_kinds_baseline_per_s=round(same.per_s, 3),
         same_kinds_ratio=round(ours.per_s / same.per_s, 3),
         same_kinds_cpu_ratio=round(same.cpu_ms / ours.cpu_ms, 3), **marks)
    ms = [t.ms for t in timed]
    labels = {"rate_per_s": opts.rate, "jobs": len(ms), "to": "ExecutionStarted.at",
              "subscriptions_stalled": sum(t.stalled for t in timed), **marks}
    emit("submit_to_running_p50_ms", percentile(ms, 50), "ms", goal=250, **labels)
    emit("submit_to_running_p99_ms", percentile(ms, 99), "ms", goal=1000, **labels)


def main(argv: list[str]) -> int:
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    if argv[:1] == ["_profiled"]:
        return profiled_main(argv[1:])
    args = parse(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpgpu-bench-pipeline-") as tmp:
        asyncio.run(run(args, Path(tmp)))
    say(f"done in {time.perf_counter() - started:.0f} s")
    return 0
