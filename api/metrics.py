"""`/metrics` for Prometheus: the network as the read model shows it, computed at scrape time.

Nothing is counted in this process: every figure is read from the views (jobs,
job_events, providers, nodes, accounts, ledger_entries) when Prometheus asks,
so every API replica answers the same, and a restart loses nothing. Counters
and histograms are totals over the whole event log, so they only grow (until a
rebuild of the read model, which Prometheus takes as a counter reset). The
process's own metrics (CPU, memory, GC) follow, from prometheus_client's
default registry.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.auth import bearer
from domain.states import JobState
from readmodel.schema import ViewDB

router = APIRouter()

JOB_STATES = tuple(sorted(s.value for s in JobState))
PROVIDER_STATUSES = ("online", "offline", "lost")
GPU_STATES = ("idle", "busy", "suspended", "degraded", "offline")
# Seconds: from a moment to a day, for waits in a queue that may hold GPUs for hours.
WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                14400.0, 86400.0)


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def histogram(name: str, doc: str, values: Sequence[float],
              buckets: Sequence[float] = WAIT_BUCKETS) -> HistogramMetricFamily:
    """A histogram of observations that are all at hand (cumulative bucket counts)."""
    counts = [(repr(float(le)), float(sum(1 for v in values if v <= le))) for le in buckets]
    counts.append(("+Inf", float(len(values))))
    return HistogramMetricFamily(name, doc, buckets=counts, sum_value=float(sum(values)))


class ReadModelCollector(Collector):
    def __init__(self, views: ViewDB, now: float | None = None):
        self.views = views
        self.now = now

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        return self.views.query(sql)

    def collect(self) -> Iterable[Metric]:
        now = time.time() if self.now is None else self.now
        yield from self._jobs(now)
        yield from self._waits()
        yield from self._providers()
        yield from self._gpu_time()
        yield from self._money()
        yield from self._projection()

    def _jobs(self, now: float) -> Iterator[Metric]:
        by_state = Counter({s: 0 for s in JOB_STATES})
        for r in self._rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            by_state[r["state"]] = r["n"]
        jobs = GaugeMetricFamily("gpgpu_jobs", "Jobs by state.", labels=["state"])
        for state, n in sorted(by_state.items()):
            jobs.add_metric([state], n)
        yield jobs

        depth: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for r in self._rows("SELECT node_id, queues FROM nodes"):
            for name in json.loads(r["queues"]):
                depth[f"{r['node_id']}/{name}"], oldest[f"{r['node_id']}/{name}"] = 0, 0.0
        queued = self._rows(
            "SELECT queue, COUNT(*) AS n, MIN(submitted_at) AS first FROM jobs"
            " WHERE state = 'QUEUED' GROUP BY queue"
        )
        for r in queued:
            depth[r["queue"]] = r["n"]
            oldest[r["queue"]] = max(0.0, now - datetime.fromisoformat(r["first"]).timestamp())
        gauge = GaugeMetricFamily(
            "gpgpu_queue_depth", "Jobs waiting for GPUs (QUEUED), by queue.", labels=["queue"]
        )
        for queue, n in sorted(depth.items()):
            gauge.add_metric([queue], n)
        yield gauge
        gauge = GaugeMetricFamily(
            "gpgpu_queue_oldest_wait_seconds",
            "How long the longest-waiting QUEUED job of the queue has been waiting since its "
            "submission (0: none waits).", labels=["queue"],
        )
        for queue, seconds in sorted(oldest.items()):
            gauge.add_metric([queue], seconds)
        yield gauge

    def _waits(self) -> Iterator[Metric]:
        submitted: dict[str, str] = {}
        first_allocated: dict[str, str] = {}
        queued: dict[tuple[str, int], str] = {}
        latencies: list[float] = []
        rows = self._rows(
            "SELECT job_id, type, at, data FROM job_events"
            " WHERE type IN ('JobSubmitted', 'JobQueued', 'GpusAllocated')"
            " ORDER BY notification_id"
        )
        for r in rows:
            job, kind, at = r["job_id"], r["type"], r["at"]
            if kind == "JobSubmitted":
                submitted[job] = at
                continue
            attempt = int(json.loads(r["data"]).get("attempt", 0))
            if kind == "JobQueued":
                queued[(job, attempt)] = at
                continue
            first_allocated.setdefault(job, at)
            since = queued.get((job, attempt), submitted.get(job))
            if since is not None:
                latencies.append(max(0.0, _seconds_between(since, at)))
        waits = [max(0.0, _seconds_between(submitted[j], at))
                 for j, at in first_allocated.items() if j in submitted]
        yield histogram(
            "gpgpu_queue_wait_seconds",
            "From a job's submission to its first allocation of GPUs, over every allocated job.",
            waits,
        )
        yield histogram(
            "gpgpu_allocation_latency_seconds",
            "From a job entering the queue (or re-entering it after a lost provider) to its "
            "GPUs being reserved, over every allocation.",
            latencies,
        )

    def _providers(self) -> Iterator[Metric]:
        statuses = Counter({s: 0 for s in PROVIDER_STATUSES})
        gpus = Counter({s: 0 for s in GPU_STATES})
        rows = self._rows(
            "SELECT status, gpus, reservations, suspended, degraded FROM providers"
        )
        for r in rows:
            statuses[r["status"]] += 1
            busy = {i for held in json.loads(r["reservations"]).values() for i in held}
            suspended, degraded = set(json.loads(r["suspended"])), json.loads(r["degraded"])
            for gpu in json.loads(r["gpus"]):
                index = gpu["index"]
                if r["status"] != "online":
                    gpus["offline"] += 1
                elif index in busy:
                    gpus["busy"] += 1
                elif index in suspended:
                    gpus["suspended"] += 1
                elif str(index) in degraded:
                    gpus["degraded"] += 1
                else:
                    gpus["idle"] += 1
        gauge = GaugeMetricFamily("gpgpu_providers", "Providers by status.", labels=["status"])
        for status, n in sorted(statuses.items()):
            gauge.add_metric([status], n)
        yield gauge
        gauge = GaugeMetricFamily(
            "gpgpu_gpus", "Providers' GPUs: idle, busy (reserved by a job), suspended by the "
            "provider, degraded, or offline (their provider is not online).", labels=["state"],
        )
        for state, n in sorted(gpus.items()):
            gauge.add_metric([state], n)
        yield gauge

    def _gpu_time(self) -> Iterator[Metric]:
        executed = sold = 0
        rows = self._rows(
            "SELECT e.data, j.cost_micro FROM job_events e JOIN jobs j ON j.job_id = e.job_id"
            " WHERE e.type = 'ExecutionFinished'"
        )
        for r in rows:
            gpu_ms = int(json.loads(r["data"]).get("gpu_ms", 0))
            executed += gpu_ms
            if (r["cost_micro"] or 0) > 0:
                sold += gpu_ms
        yield CounterMetricFamily(
            "gpgpu_gpu_seconds_executed", "GPU-seconds providers ran jobs for (every run).",
            value=executed / 1000,
        )
        yield CounterMetricFamily(
            "gpgpu_gpu_seconds_sold",
            "GPU-seconds of runs in jobs whose settlement charged the client.",
            value=sold / 1000,
        )

    def _money(self) -> Iterator[Metric]:
        settled = self._rows(
            "SELECT COUNT(*) AS n, COALESCE(SUM(cost_micro), 0) AS charged FROM jobs"
            " WHERE cost_micro IS NOT NULL"
        )[0]
        yield CounterMetricFamily("gpgpu_jobs_settled", "Jobs settled.", value=settled["n"])
        yield CounterMetricFamily(
            "gpgpu_charged_micro", "Micro-credits charged to clients at settlement.",
            value=settled["charged"],
        )
        moved = CounterMetricFamily(
            "gpgpu_ledger_micro",
            "Micro-credits moved by the ledger, by kind of transfer (escrow, payment to "
            "providers, fee, refund, verification paid by the network, deposit).",
            labels=["kind"],
        )
        rows = self._rows(
            "SELECT kind, SUM(amount_micro) AS micro FROM ledger_entries"
            " WHERE amount_micro > 0 GROUP BY kind ORDER BY kind"
        )
        for r in rows:
            moved.add_metric([r["kind"]], r["micro"])
        yield moved
        balances: dict[str, int] = defaultdict(int)
        for r in self._rows("SELECT name, balance_micro FROM accounts"):
            balances[account_class(r["name"])] += r["balance_micro"]
        gauge = GaugeMetricFamily(
            "gpgpu_balance_micro",
            "Balances summed by kind of account: clients, escrow held for running jobs, "
            "providers' earnings, and each protocol and external account.", labels=["account"],
        )
        for name, micro in sorted(balances.items()):
            gauge.add_metric([name], micro)
        yield gauge


    def _projection(self) -> Iterator[Metric]:
        (row,) = self._rows("SELECT COUNT(*) AS n FROM projection_set_aside")
        yield CounterMetricFamily(
            "gpgpu_projection_events_set_aside",
            "Events the read model could not apply and set aside (projection_set_aside names "
            "each and its error); the others were applied.",
            value=row["n"],
        )


def account_class(name: str) -> str:
    """client:alice -> client; the protocol's and the outside world's accounts by name."""
    prefix = name.partition(":")[0]
    return name if prefix in ("protocol", "external") else prefix


def render(views: ViewDB) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReadModelCollector(views))
    return generate_latest(registry) + generate_latest(REGISTRY)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    services = request.app.state.services
    wanted = services.settings.metrics_token
    if wanted:
        given = bearer(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(given.encode(), wanted.encode()):
            return Response("metrics: send Authorization: Bearer <GPGPU_METRICS_TOKEN>\n",
                            status_code=401, media_type="text/plain",
                            headers={"WWW-Authenticate": "Bearer"})
    views: ViewDB = services.views
    body = await asyncio.to_thread(render, views)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
