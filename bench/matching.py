"""`python -m bench matching`: how fast the scheduler places jobs among many providers.

On PostgreSQL (a fresh schema, dropped afterwards): 10,000 providers holding
100,000 GPUs (ten each, a mix of models, prices, regions and reputations) join
one node, 1,000 jobs from 50 clients wait in its queue, and the control
worker's scheduler (activities/scheduler.py) places them: fair order, one
matching decision per job, every reservation and allocation written to the
event store. Figures:

- allocations_per_s: jobs placed / wall time of the scheduling rounds: reading
  the event log for copies another writer changed, ordering, ranking, deciding
  and writing every reservation and allocation; the setup (joining providers,
  submitting jobs, the scheduler loading its copies) is not timed;
- decision_p50_ms / decision_p99_ms: one job's matching decision in a round;
- heartbeats_per_s: provider heartbeats with telemetry taken into the views
  database (bench/heartbeats.py), for the same 10,000 providers.

Each figure is one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from activities.scheduler import Scheduler
from bench._common import postgres_schema, say
from domain.application import Network
from domain.ledger import client_account, escrow_account, transfer
from domain.node import DEFAULT_NODE
from domain.provider import Directory, Provider
from infra.settings import Settings

MODELS = [("NVIDIA H100 80GB HBM3", 81_559), ("NVIDIA A100-SXM4-40GB", 40_960),
          ("NVIDIA L4", 23_034), ("NVIDIA RTX 4090", 24_564)]
REGIONS = ["eu", "us", "ap"]


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    print(json.dumps({"bench": "matching", "metric": metric, "value": round(value, 3),
                      "unit": unit, **labels}), flush=True)


def postgres_store(workdir: Path) -> AbstractContextManager[Settings]:
    return postgres_schema("bench_matching", workdir)


def join_providers(network: Network, providers: int, gpus_each: int, rng: random.Random) -> None:
    """Providers join in batches of 500 per transaction (setup, not timed)."""
    node = network.node(DEFAULT_NODE)
    directory = Directory()
    for start in range(0, providers, 500):
        batch = []
        for n in range(start, min(providers, start + 500)):
            model, memory = MODELS[n % len(MODELS)]
            provider = Provider(
                provider_id=f"p{n:05d}", region=REGIONS[n % len(REGIONS)],
                price_per_gpu_hour_micro=rng.randrange(500_000, 3_000_000, 10_000),
                gpus=[{"index": i, "model": model, "memory_mb": memory}
                      for i in range(gpus_each)],
            )
            for k in range(rng.randrange(0, 4)):  # some history, so reputations differ
                provider.record_outcome(f"past-{n}-{k}", rng.choice(["success"] * 5 + ["lost"]))
            directory.add(provider.provider_id)
            node.admit_provider(provider.provider_id)
            batch.append(provider)
        network.save(*batch)
        say(f"  {min(providers, start + 500)}/{providers} providers joined")
    network.save(directory, node)


def queue_jobs(network: Network, jobs: int, clients: int, rng: random.Random) -> list[str]:
    """Jobs submitted and admitted (escrow moved), in batches (setup, not timed)."""
    from domain.job import Job
    from protocol.spec import parse_job_spec

    accounts = {}
    for c in range(clients):
        network.open_client(f"client-{c:02d}", 10**15)
        accounts[c] = network.account(client_account(f"client-{c:02d}"))
    job_ids = []
    for start in range(0, jobs, 250):
        batch: list[Any] = []
        for n in range(start, min(jobs, start + 250)):
            model = rng.choice([None, "H100", "A100", "L4"])
            resources: dict[str, Any] = {"gpus": rng.choice([1, 1, 1, 2, 4, 8])}
            if model:
                resources["gpu_model"] = model
            spec = parse_job_spec({
                "name": f"job-{n}", "command": "true", "max_price_per_gpu_hour": "3",
                "timeout": "10m", "resources": resources,
            })
            job_id = f"job-{n:05d}"
            client = n % clients
            job = Job(job_id=job_id, client_id=f"client-{client:02d}",
                      spec=spec.model_dump(mode="json"), max_cost_micro=spec.max_cost_micro,
                      sealed_env="")  # no env
            escrow = network.account(escrow_account(job_id))
            transfer(accounts[client], escrow, f"escrow:{job_id}", job.max_cost_micro, "escrow")
            job.record_escrow(job.max_cost_micro)
            job.queue(1)
            batch += [job, escrow]
            job_ids.append(job_id)
        network.save(*batch, *accounts.values())
        say(f"  {min(jobs, start + 250)}/{jobs} jobs queued")
    return job_ids


def measure_allocation(settings: Settings, providers: int, gpus_each: int, jobs: int,
                       clients: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    network = Network(env=settings.eventsourcing_env())
    try:
        say(f"matching: {providers} providers x {gpus_each} GPUs, {jobs} jobs, PostgreSQL")
        join_providers(network, providers, gpus_each, rng)
        job_ids = queue_jobs(network, jobs, clients, rng)
        online = {f"p{n:05d}" for n in range(providers)}
        timings: list[float] = []  # one entry per matching decision
        scheduler = Scheduler(network, lambda: online, timings=timings)
        # A running scheduler holds its copies of the node's providers and of each waiting
        # job (loaded as the job's allocate activity puts it in line): not timed.
        scheduler.load_node(DEFAULT_NODE)
        for job_id in job_ids:
            scheduler.enqueue(job_id, 1, set())
        started = time.perf_counter()
        placed = rounds = 0
        while placed < jobs and rounds < 20:
            placed += scheduler.run_round()
            rounds += 1
        elapsed = time.perf_counter() - started
        reserved = sum(
            1 for p in (network.provider(f"p{n:05d}") for n in range(0, providers, 97))
            for _ in p.reservations
        )
        say(f"  placed {placed} jobs in {rounds} round(s), {elapsed:.3f} s "
            f"({reserved} reservations seen on a sample of providers)")
        ms = sorted(t * 1000 for t in timings)
        return {
            "allocations_per_s": placed / elapsed,
            "decision_p50_ms": statistics.median(ms),
            "decision_p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "placed": placed,
        }
    finally:
        network.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench matching", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--providers", type=int, default=10_000)
    p.add_argument("--gpus-each", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1_000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--heartbeat-seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1,000 providers, 200 jobs, 1 s")
    args = p.parse_args(argv)
    if args.quick:
        args.providers, args.jobs, args.heartbeat_seconds = 1_000, 200, 1.0
    labels = {"providers": args.providers, "gpus": args.providers * args.gpus_each,
              "jobs": args.jobs, "store": "postgres"}
    with (
        tempfile.TemporaryDirectory(prefix="bench-matching-") as tmp,
        postgres_store(Path(tmp)) as settings,
    ):
        figures = measure_allocation(settings, args.providers, args.gpus_each, args.jobs,
                                     args.clients, args.seed)
        emit("allocations_per_s", figures["allocations_per_s"], "allocations/s", **labels)
        emit("decision_p50_ms", figures["decision_p50_ms"], "ms", **labels)
        emit("decision_p99_ms", figures["decision_p99_ms"], "ms", **labels)
        try:
            from bench.heartbeats import measure as measure_heartbeats
        except ImportError:
            say("bench/heartbeats.py is missing: no heartbeat figure")
            return 1
        from readmodel.schema import ViewDB

        views = ViewDB(settings)
        try:
            rate = measure_heartbeats(views, providers=args.providers,
                                      seconds=args.heartbeat_seconds)
        finally:
            views.close()
        emit("heartbeats_per_s", rate, "heartbeats/s", providers=args.providers,
             store="postgres")
    return 0
