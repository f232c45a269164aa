"""Our pipeline under `python -m bench pipeline`: its clients sign up, providers come
online, jobs are submitted in batches or at a steady rate and followed to their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from temporalio.client import Client
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench._common import bounded, say
from bench.pipeline_history import Run, finished_runs
from bench.pipeline_procs import Processes, profile_report, replicas
from client.subscription import SUBPROTOCOL, JobEventsSession
from ops.devstack import agent_env
from ops.launch import wait_for_http

T = TypeVar("T")

SPEC = {
    "name": "noop", "command": ["true"], "resources": {"gpus": 1},
    "max_price_per_gpu_hour": "2.5", "timeout": "1m",
}
SUBMIT = """mutation($spec: JSON!) { submitJob(spec: $spec) {
  __typename ... on JobSubmitted { job { id } } ... on SpecRejected { errors { field message } }
} }"""
PROVIDERS = "{ providers { providerId status } }"
SIGN_UP = """mutation($e: String!, $p: String!, $r: [String!]!) {
  signUp(email: $e, password: $p, roles: $r) {
    ... on Session { token } ... on FieldError { field message } } }"""
CREATE_KEY = """mutation($n: String!, $s: [String!]!) {
  createApiKey(name: $n, scopes: $s) { ... on ApiKeyCreated { key } } }"""
PASSWORD = "bench password"
ENOUGH = 10.0  # seconds to wait per job, at least, before a phase counts as stuck
STALL_S = 15.0  # a subscription silent this long after its job closed has stalled



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
        session = (await self.gql(SIGN_UP, None, e=f"{name}@bench.test", p=PASSWORD,
                                  r=[role]))["signUp"]
        if "token" not in session:
            raise RuntimeError(f"sign-up refused: {session['field']}: {session['message']}")
        return str(session["token"])

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

