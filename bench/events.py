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
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench._common import emit_line, percentile, say
from bench.events_latency import measure_idle, measure_latency, measure_own_jobs
from bench.events_store import measure_append, measure_rebuild
from infra.settings import Settings

PARTS = ("append", "rebuild", "latency", "own_jobs", "idle")


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    emit_line("events", metric, round(value, 2), unit, labels)


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
    args.own_jobs = args.own_jobs or (10 if quick else 1_000)
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
