"""The event store's figures of `python -m bench events`: events appended per second, and
the projection rebuilt from them (checked against what was stored)."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eventsourcing.domain import Aggregate

from bench._common import postgres_schema, say
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
from infra.settings import Settings
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


@contextmanager
def event_store(kind: str, workdir: Path) -> Iterator[Settings]:
    """Settings for a fresh, empty store: a new SQLite home, or a new PostgreSQL schema."""
    home = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    if kind == "sqlite":
        yield Settings(home=home, event_store="sqlite")
        return
    with postgres_schema("bench_events", home) as settings:
        yield settings


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
        max_cost_micro=SPEC.max_cost_micro, sealed_env="",  # no env
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

