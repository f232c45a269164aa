"""A network of real processes the reliability tests can break: kill -9 any of them, start it
again, run several of a kind; the event log read back as it grows.

The processes are the ones `gpgpu up` runs (ops/devstack.py), started the same way, with
the end-to-end tests' short fault timeouts (tests/e2e/network.py: FAST_FAULTS). Callers are
that module's named accounts (`Network.gql(query, "alice")`), signed up through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from domain.application import Network as DomainNetwork
from infra.settings import Settings
from ops.devstack import ROOT, Stack
from ops.launch import free_port, start_listening, temporal_dev_args, wait_for_http
from tests.e2e.network import FAST_FAULTS, PROVIDER_OWNER, Network
from tests.support.graphql import SUBMIT

TERMINAL = ("JobSucceeded", "JobFailed", "JobCancelled", "JobRejected")


# Processes


def _parent_and_group(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of `pid` from one read of /proc/<pid>/stat, or None when
    it is gone. "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Proc:
    """One child process that can be killed and started again with the same arguments."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n==== start {self.starts + 1} of {self.name}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        """The pids of its child processes now (a provider's: the jobs it runs)."""
        if not self.alive():
            return []
        return [pid for pid in (int(e.name) for e in Path("/proc").iterdir()
                                if e.name.isdigit())
                if (found := _parent_and_group(pid)) is not None and found[0] == self.pid]

    def kill9(self) -> None:
        """SIGKILL the process and everything it started, as a machine that dies: its own
        process group and its children's (a provider runs each job in a group of its own)."""
        if self.proc is None:
            return
        groups = {self.proc.pid}
        for child in self.children():
            # Its group as the same read of the child shows it, then only while that group's
            # leader is still a child of this process: a child that ended meanwhile may have
            # its pid taken by another process, as the leader of a group of its own (another
            # provider's job; a CI-try lost one so when the control worker was killed).
            found = _parent_and_group(child)
            if found is not None and found[0] == self.pid:
                groups.add(found[1])
        for group in groups:
            leader = _parent_and_group(group)
            if group != self.proc.pid and (leader is None or leader[0] != self.pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class TemporalServer:
    """A Temporal dev server of our own, on a SQLite file, that survives kill -9 and restart."""

    def __init__(self, home: Path, port: int | None = None):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db = home / "temporal.db"
        self.proc = Proc("temporal", [], dict(os.environ), home / "logs" / "temporal.log")

    def start(self) -> None:
        """On the same port and SQLite file each time (its other ports are fresh)."""

        def start() -> subprocess.Popen[bytes]:
            self.proc.args = temporal_dev_args(self.port, self.db)
            self.proc.start()
            assert self.proc.proc is not None
            return self.proc.proc

        start_listening(start, "127.0.0.1", self.port, "the Temporal dev server", 30)

    def stop(self) -> None:
        self.proc.stop()


# The network


def submit(net: Network, client: str, spec: dict[str, Any]) -> str:
    """Submit a job as `client` (a caller name of tests/e2e/network.py); its id."""
    result = net.gql(SUBMIT, client, s=spec)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    return str(result["job"]["id"])


@dataclass
class Cluster:
    """API servers, control workers and simulated providers around one Temporal server.

    `settings` names the shared stores (home, event store); every process gets its own
    environment on top (its API port, which API it talks to). `net(api)` is the end-to-end
    tests' client (tests/e2e/network.py) pointed at one API; all of them share the accounts.
    """

    home: Path
    temporal_address: str
    settings: Settings
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)
    api_urls: dict[str, str] = field(default_factory=dict)
    nets: dict[str, Network] = field(default_factory=dict)
    provider_keys: dict[str, str] = field(default_factory=dict)  # owner -> its provider key
    owners: dict[str, str] = field(default_factory=dict)  # provider id -> its owner

    @classmethod
    def create(cls, home: Path, temporal_address: str, extra_env: dict[str, str] | None = None,
               settings: Settings | None = None) -> Cluster:
        settings = settings or Settings(home=home)
        env = {
            **os.environ, **FAST_FAULTS,
            "GPGPU_HOME": str(home.resolve()),
            "GPGPU_TEMPORAL_ADDRESS": temporal_address,
            "GPGPU_LOG_LEVEL": "WARNING",
            "GPGPU_CONTROL_TASK_QUEUE": f"control-{free_port()}",
            "GPGPU_EVENT_STORE": settings.event_store,
            "GPGPU_PG_SCHEMA": settings.pg_schema,
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        # Production's rule: processes on one PostgreSQL store share a given payload key and
        # a given signing key (the test's own settings' where it has them).
        for name, given in (("GPGPU_TEMPORAL_PAYLOAD_KEYS", settings.temporal_payload_keys),
                            ("GPGPU_SIGNING_KEY", settings.signing_key)):
            if settings.event_store == "postgres" and not env.get(name):
                env[name] = given or secrets.token_hex(32)
        return cls(home, temporal_address, settings, env)

    def _proc(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, {**self.env, **env}, self.home / "logs" / f"{name}.log")
        self.procs[name] = proc
        return proc.start()

    def start_api(self, name: str = "api") -> Network:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self._proc(name, [sys.executable, "-m", "api"],
                   {"GPGPU_API_PORT": str(port), "GPGPU_API_URL": url})
        self.api_urls[name] = url
        self.wait_api(name)
        settings = self.settings.model_copy(update={"api_url": url, "api_port": port})
        net = Network(Stack(settings, {}))
        if self.nets:  # one set of accounts, whichever API a test talks to
            net.accounts = next(iter(self.nets.values())).accounts
        self.nets[name] = net
        return net

    def net(self, name: str = "api") -> Network:
        return self.nets[name]

    def wait_api(self, name: str = "api") -> None:
        try:
            wait_for_http(f"{self.api_urls[name]}/healthz", 60, name)
        except RuntimeError:
            raise AssertionError(f"{name} did not start:\n{self.procs[name].tail()}") from None

    def start_control_worker(self, name: str = "control", api: str = "api",
                             home: Path | None = None) -> None:
        """A control worker; with `home`, under a home of its own (a container of its own:
        no file in common with the API)."""
        env = {"GPGPU_API_URL": self.api_urls[api]}
        if home is not None:
            env["GPGPU_HOME"] = str(home.resolve())
        self._proc(name, [sys.executable, "-m", "activities.worker"], env)

    def wait_control_workers(self, names: Iterable[str], timeout_s: float = 60) -> None:
        """Until each named control worker polls the control queue for workflow tasks (the
        identity Temporal gives a poller is the worker's pid@host). Jobs submitted before a
        worker polls all go to the others, and stay there: Temporal keeps a workflow's later
        tasks on the worker that ran its first (sticky execution)."""
        want = {f"{self.procs[n].pid}@{socket.gethostname()}": n for n in names}

        async def pollers() -> set[str]:
            client = await Client.connect(self.temporal_address)
            reply = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=self.env["GPGPU_CONTROL_TASK_QUEUE"]),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ))
            return {p.identity for p in reply.pollers}

        deadline = time.monotonic() + timeout_s
        while True:
            missing = set(want) - asyncio.run(pollers())
            if not missing:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {want[m]}\n{self.procs[want[m]].tail(1500)}" for m in missing
                )
                raise AssertionError(f"control workers not polling after {timeout_s:.0f} s "
                                     f"(pollers: {asyncio.run(pollers())}):\n{logs}")
            time.sleep(0.2)

    def start_provider(self, provider_id: str, gpus: str, price: str = "1.0",
                       api: str = "api", owner: str = PROVIDER_OWNER) -> None:
        """A simulated provider that runs with a provider key of `owner` (a caller name of
        tests/e2e/network.py, signed up with the provider role), which so owns it. A job's
        replicas, checks and verifier run on providers of distinct owners."""
        if owner not in self.provider_keys:
            net = self.net(api)
            net.sign_up(owner, ["provider"])
            self.provider_keys[owner] = net.api_key(owner, ["provider"])
        self.owners[provider_id] = owner
        self._proc(provider_id, [
            sys.executable, "-m", "worker_gpu", "--provider-id", provider_id,
            "--simulate", gpus, "--price", price,
            "--scratch", str(self.home / "providers" / provider_id),
        ], {"GPGPU_API_URL": self.api_urls[api], "GPGPU_API_KEY": self.provider_keys[owner]})

    def restart(self, name: str) -> None:
        """kill -9, then start again with the same arguments (an API waits until it answers)."""
        proc = self.procs[name]
        proc.kill9()
        proc.start()
        if name in self.api_urls:
            self.wait_api(name)

    def wait_providers_online(self, ids: list[str], timeout_s: float = 60) -> None:
        try:
            next(iter(self.nets.values())).wait_providers_online(ids, timeout_s)
        except AssertionError as err:
            logs = "\n".join(f"--- {n}\n{self.procs[n].tail(1500)}" for n in ids)
            raise AssertionError(f"{err}\n{logs}") from None

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        for net in self.nets.values():
            net.http.close()

    def logs(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {n}\n{p.tail(chars)}" for n, p in self.procs.items())


def submit_many(nets: list[Network], jobs: list[tuple[str, dict[str, Any]]],
                threads: int = 6) -> list[str]:
    """Submit (client, spec) pairs, `threads` at a time, the n-th through nets[n % len]."""
    for client in dict.fromkeys(c for c, _ in jobs):
        nets[0].account(client)  # signed up once, before the threads race to do it

    def one(n: int) -> str:
        client, spec = jobs[n]
        return submit(nets[n % len(nets)], client, spec)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(jobs))))


# The event log


def event_type(event: Any) -> str:
    return type(event).__qualname__.rpartition(".")[2]


class EventLog:
    """The application's notification log, read as it grows (a process of its own)."""

    def __init__(self, settings: Settings):
        self.app = DomainNetwork(env=settings.eventsourcing_env())
        self.ids: list[int] = []
        self.events: list[Any] = []
        self.position = 0
        self.jobs: dict[Any, str] = {}  # a Job aggregate's id -> its job id

    def read(self) -> list[Any]:
        """What was recorded since the last read."""
        new: list[Any] = []
        while True:
            batch = self.app.recorder.select_notifications(
                start=self.position, limit=2000, inclusive_of_start=False)
            for n in batch:
                self.ids.append(n.id)
                event: Any = self.app.mapper.to_domain_event(n)
                if event_type(event) == "JobSubmitted":
                    self.jobs[event.originator_id] = event.job_id
                new.append(event)
            if batch:
                self.position = batch[-1].id
            if len(batch) < 2000:
                break
        self.events += new
        return new

    def of_type(self, *names: str) -> list[Any]:
        return [e for e in self.events if event_type(e) in names]

    def jobs_submitted(self) -> list[Any]:
        return self.of_type("JobSubmitted")

    def job_of(self, event: Any) -> str:
        return self.jobs[event.originator_id]

    def wait_ended(self, job_ids: Iterable[str], timeout_s: float) -> dict[str, str]:
        """Wait until every job has a terminal event; each job's terminal event type."""
        wanted = set(job_ids)
        ended: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            self.read()  # others may have read some already: look at every event
            for e in self.of_type(*TERMINAL):
                ended.setdefault(self.jobs[e.originator_id], event_type(e))
            if wanted <= set(ended):
                return {j: ended[j] for j in wanted}
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(ended))
                raise AssertionError(f"{len(missing)} of {len(wanted)} jobs did not end within "
                                     f"{timeout_s:.0f} s, e.g. {missing[:3]}")
            time.sleep(0.5)


def per_job(log: EventLog, names: Iterable[str]) -> dict[str, Counter[str]]:
    """How many times each job recorded each of these event types."""
    wanted = set(names)
    ids = log.jobs
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in log.events:
        t = event_type(e)
        if t in wanted and e.originator_id in ids:
            counts[ids[e.originator_id]][t] += 1
    return counts
