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
import math
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench._common import bounded, emit_line, percentile, say
from bench.pipeline_history import Run, breakdown, finished_runs, jobs_per_s
from bench.pipeline_jobs import ENOUGH, Options, Pipeline, Timed
from bench.pipeline_plain import LOCAL, PLAIN_CONTROL_QUEUE, PlainInput, PlainWorkflow, worker_main
from bench.pipeline_procs import Cpu, Processes, profiled_main, replicas


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    emit_line("pipeline", metric, round(value, 3), unit, labels)


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
        say("  p99 ms from the submit request to each event: " + ", ".join(
            f"{name} {percentile(ms, 99):.0f}"
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
    # + 2). Imported here: the control plane is not imported until the baseline runs.
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
    args.jobs = args.jobs or (10 if quick else 200)
    args.providers = args.providers or (2 if quick else 4)
    args.gpus = args.gpus or (16 if quick else 64)
    args.seconds = args.seconds or (2.0 if quick else 60.0)
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
    emit("ratio_to_temporal", ours.per_s / base.per_s, "ratio", jobs=opts.jobs, goal=0.9,
         cpu_ratio=round(base.cpu_ms / ours.cpu_ms, 3),
         same_kinds_baseline_per_s=round(same.per_s, 3),
         same_kinds_ratio=round(ours.per_s / same.per_s, 3),
         same_kinds_cpu_ratio=round(same.cpu_ms / ours.cpu_ms, 3), **marks)
    ms = [t.ms for t in timed]
    labels = {"rate_per_s": opts.rate, "jobs": len(ms), "to": "ExecutionStarted.at",
              "subscriptions_stalled": sum(t.stalled for t in timed), **marks}
    emit("submit_to_running_p50_ms", percentile(ms, 50), "ms", **labels)
    emit("submit_to_running_p99_ms", percentile(ms, 99), "ms", goal=150, **labels)


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
