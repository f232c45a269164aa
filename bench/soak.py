"""`python -m bench soak`: many jobs of mixed specs through a real network while it is broken;
every job must end within its bound and leave nothing held.

The network is the reliability tests' (tests/reliability/harness.py): a Temporal dev server of
its own on a SQLite file, an API, a control worker and simulated providers, each a real process
that can be killed with SIGKILL and started again, with the end-to-end tests' short fault
timeouts, and the network's own adaptive checks on (as in production). Providers:
`--providers` N (at least 5): N - 2 with 2 H100 each, one with 2 A100 and one with 2 L4, so
two GPU models are on a single provider only. Each provider has an owner of its own but the
first two H100 ones, which share one: a job's replicas, check and verifier run on providers
of distinct owners, so those two never serve one job together.

`--jobs` jobs (default 300; `--quick` 20) from `--clients` clients (one thread each, signed up
through the API) with specs drawn from `--seed`: plain runs, runs on a single-provider model
(A100 or L4), 2 and 3 replicas, a verifier command, and runs that outlive their own timeout;
`--cancel-share` of them (15 %; `--quick` 30 %) are cancelled once the API shows them in a
state drawn for each (queued, staging, running, uploading, verifying or settling, or a later
one; the state each cancel met is reported). While they run, one provider is killed with
SIGKILL while it runs a job and started again, and later the API is killed and started again
(clients retry through the outage).

Then, from the event log (tests/reliability/ledger.py), the read model through the API and
the providers' GPUs as their owner sees them:

- every job reached a terminal state before `--deadline-s` (the whole soak's bound: it never
  hangs; a watchdog stops it `--deadline-s` + 120 s after start whatever happens);
- no job took longer than its bound: from its first allocation (or its submit, if never
  placed) to its terminal event, at most its timeout times the runs its spec pays for
  (replicas, tie-break, verifier), plus `--grace-s`;
- the API shows every job in the terminal state its events record;
- no two runs of one job (replicas, the network's check, the verifier; lost ones aside) ran
  on providers of one owner;
- no GPU is still reserved (replaying GpusReserved/GpusReleased, and each provider's GPUs as
  the API shows them to their owner);
- every ledger transfer is posted once on each side and all balances sum to zero;
- no escrow is open: each escrowed job settled and its escrow account is empty.

Figures, one JSON line each on stdout (progress on stderr): jobs, jobs_terminal (labels: by
state), jobs_not_terminal, wall_time_s, max_overrun_s (the longest time a job took past its
bound; labels: its job), jobs_run_more_than_once (replicas, checks, verifiers that ran; labels:
those on one owner's providers, which must be none, and the runs given up: CheckSkipped,
RunUnplaced), gpus_reserved, ledger_sum_micro, lopsided_transfers, open_escrows,
read_model_mismatches. It exits 1 when an invariant fails (each failure is named on stderr,
and in a last line `failures`), 0 otherwise.
"""

from __future__ import annotations

import argparse
import heapq
import random
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeVar

import httpx

from bench._common import say
from bench.soak_audit import audit, emit, wait_terminal
from bench.soak_plan import CANCEL_SHARE, Planned, plan, providers_of
from tests.e2e.network import Network
from tests.reliability.harness import (
    Cluster,
    EventLog,
    TemporalServer,
    submit,
)

T = TypeVar("T")

PRICE = "1.0"  # every provider's, credits per GPU-hour
# The API's states in a job's order; a cancel waits for one of them (CANCEL_AT) or a later one.
STEPS = ("SUBMITTED", "QUEUED", "STAGING", "RUNNING", "UPLOADING", "VERIFYING", "SETTLING")
CANCEL_WAIT_S = 60.0  # a cancel that waited this long for its state is sent anyway
RETRY_S = 90.0  # how long a client retries a request through an API outage
JOB_STATE = "query($id: ID!) { job(id: $id) { state } }"
CANCEL = """mutation($id: ID!) { cancelJob(id: $id) {
  ... on Job { state } __typename ... on FieldError { field message } } }"""


# The run


@dataclass
class Soak:
    cluster: Cluster
    net: Network
    planned: list[Planned]
    started: float = field(default_factory=time.monotonic)
    api_up: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: dict[str, Planned] = field(default_factory=dict)
    submit_errors: list[str] = field(default_factory=list)
    # a heap of (when to look next, job number, job id, client, state to cancel at, give up)
    cancels: list[tuple[float, int, str, str, str, float]] = field(default_factory=list)
    cancelled_at: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    done_submitting: threading.Event = field(default_factory=threading.Event)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """fn() as a client would: through an API outage, retried for up to RETRY_S."""
        deadline = time.monotonic() + RETRY_S
        while True:
            self.api_up.wait(RETRY_S)
            try:
                return fn()
            except (httpx.TransportError, httpx.HTTPStatusError) as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what}: the API did not answer for {RETRY_S:.0f} s: "
                                       f"{err}") from err
                time.sleep(0.5)

    def client_loop(self, client: str, rng: random.Random) -> None:
        for p in (p for p in self.planned if p.client == client):
            try:
                job_id = self.call(f"submit job {p.n}", partial(submit, self.net, client, p.spec))
            except (RuntimeError, AssertionError) as err:
                with self.lock:
                    self.submit_errors.append(f"job {p.n} ({p.kind}): {err}")
                continue
            with self.lock:
                self.submitted[job_id] = p
                if p.cancel_at is not None:
                    now = time.monotonic()
                    heapq.heappush(self.cancels, (now, p.n, job_id, client, p.cancel_at,
                                                  now + CANCEL_WAIT_S))
            time.sleep(rng.uniform(0.0, 0.4))

    def cancel_loop(self) -> None:
        while True:
            with self.lock:
                due = self.cancels[0] if self.cancels else None
                if due is not None and due[0] <= time.monotonic():
                    heapq.heappop(self.cancels)
            if due is None:
                if self.done_submitting.is_set():
                    return
                time.sleep(0.1)
                continue
            if due[0] > time.monotonic():
                time.sleep(min(0.1, due[0] - time.monotonic()))
                continue
            _, n, job_id, client, target, give_up = due
            try:
                state = self.state(job_id, client)
            except (RuntimeError, AssertionError, TypeError) as err:
                self.cancelled_at[f"not looked at: {str(err)[:80]}"] += 1
                continue
            reached = state not in STEPS or STEPS.index(state) >= STEPS.index(target)
            if reached or time.monotonic() > give_up:
                self.cancel(job_id, client, state)
            else:
                with self.lock:
                    heapq.heappush(self.cancels,
                                   (time.monotonic() + 0.3, n, job_id, client, target, give_up))

    def state(self, job_id: str, client: str) -> str:
        """The job's state as the API shows it to its client."""
        job = self.call("job state", partial(self.net.gql, JOB_STATE, client, id=job_id))["job"]
        return str(job["state"]) if job else "not found"

    def cancel(self, job_id: str, client: str, state: str) -> None:
        """cancelJob as the job's client; counted by the state the job was in just before."""
        try:
            answer = self.call(f"cancel {job_id}",
                               lambda: self.net.gql(CANCEL, client, id=job_id))["cancelJob"]
        except (RuntimeError, AssertionError) as err:  # not the client's, a fault: recorded
            self.cancelled_at[f"refused: {str(err)[:80]}"] += 1
            return
        if answer["__typename"] != "FieldError":
            self.cancelled_at[state] += 1
            return
        ended = re.search(r"is already ([A-Z]+)", answer["message"])  # the job had ended
        self.cancelled_at[f"refused: already {ended[1]}" if ended
                          else f"refused: {answer['field']}: {answer['message'][:80]}"] += 1

    def running_provider(self, ids: list[str], timeout_s: float) -> str | None:
        """An H100 provider whose agent runs a job's process now."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for provider_id in ids:
                if self.cluster.procs[provider_id].children():
                    return provider_id
            time.sleep(0.2)
        return None

    def fault_loop(self, h100: list[str]) -> None:
        """Once a third of the jobs are in, kill -9 a busy provider and start it again; once
        two thirds are, kill -9 the API, keep it down 3 s and start it again."""
        total = len(self.planned)
        for share, victim in ((1 / 3, "provider"), (2 / 3, "api")):
            while len(self.submitted) < total * share and not self.done_submitting.is_set():
                time.sleep(0.2)
            if victim == "provider":
                chosen = self.running_provider(h100, 60) or h100[-1]
                proc = self.cluster.procs[chosen]
                running = len(proc.children())
                proc.kill9()
                time.sleep(5)  # long enough for its runs to be lost (FAST_FAULTS: 3 s)
                proc.start()
                self.faults.append(f"{chosen} killed -9 running {running} job processes at "
                                   f"{time.monotonic() - self.started:.0f} s, started again")
            else:
                self.api_up.clear()
                try:
                    self.cluster.procs["api"].kill9()
                    time.sleep(3)
                    self.cluster.procs["api"].start()
                    self.cluster.wait_api("api")
                finally:
                    self.api_up.set()  # clients retry, and name an API that never came back
                self.faults.append(f"api killed -9 at {time.monotonic() - self.started:.0f} s, "
                                   "down 3 s, started again")
            say(self.faults[-1])




def run(args: argparse.Namespace, home: Path) -> int:
    clients = [f"soak{i}" for i in range(1, args.clients + 1)]
    planned = plan(args.jobs, clients, args.seed, args.cancel_share)
    providers = providers_of(args.providers)
    h100 = [p for p, gpus, _ in providers if "H100" in gpus]
    temporal = TemporalServer(home)
    temporal.start()
    cluster = Cluster.create(home, temporal.address, extra_env={
        # the network's own checks, as in production (--no-checks: off, to tell apart what
        # they cause)
        "GPGPU_ADAPTIVE_CHECKS": "false" if args.no_checks else "true",
        "GPGPU_STARTING_BALANCE_MICRO": str(1000 * 1_000_000),
        # Every job may be one client's (--clients 1), every provider one account's.
        "GPGPU_MAX_LIVE_JOBS_PER_CLIENT": str(max(1000, args.jobs)),
        "GPGPU_MAX_SUBMISSIONS_PER_CLIENT_PER_MINUTE": str(max(600, args.jobs)),
        "GPGPU_MAX_PROVIDERS_PER_ACCOUNT": str(max(64, args.providers)),
        # A run that cannot be placed gives up within these (CheckSkipped, RunUnplaced): short
        # here so that a stuck wait shows within the soak's own deadline and grace.
        "GPGPU_CHECK_WAIT_S": str(args.check_wait_s),
        "GPGPU_REPLICA_WAIT_S": str(args.replica_wait_s),
    })
    began = time.monotonic()
    try:
        net = cluster.start_api()
        cluster.start_control_worker()
        for provider_id, gpus, owner in providers:
            cluster.start_provider(provider_id, gpus, PRICE, owner=owner)
        cluster.wait_providers_online([p for p, _, _ in providers])
        for client in clients:
            net.account(client)  # signed up once, before the threads
        say(f"network up in {time.monotonic() - began:.0f} s: {len(providers)} providers; "
            f"{len(planned)} jobs from {len(clients)} clients (seed {args.seed})")
        log = EventLog(cluster.settings)
        soak = Soak(cluster, net, planned)
        soak.api_up.set()
        rng = random.Random(args.seed + 1)
        threads = [threading.Thread(target=soak.client_loop, args=(c, random.Random(rng.random())),
                                    daemon=True, name=c) for c in clients]
        helpers = [threading.Thread(target=soak.cancel_loop, daemon=True, name="cancel"),
                   threading.Thread(target=soak.fault_loop, args=(h100,), daemon=True,
                                    name="faults")]
        for t in [*threads, *helpers]:
            t.start()
        deadline = soak.started + args.deadline_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        soak.done_submitting.set()
        for t in helpers:
            t.join(max(0.0, deadline - time.monotonic()))
        soak.api_up.set()
        say(f"{len(soak.submitted)} jobs submitted in {time.monotonic() - soak.started:.0f} s; "
            "waiting for every job to end")
        with soak.lock:
            job_ids = set(soak.submitted)
        ended = wait_terminal(log, job_ids, deadline)
        wall = time.monotonic() - soak.started
        failures = audit(soak, log, ended, args.grace_s)
        emit("wall_time_s", round(wall, 1), "s", faults=soak.faults,
             deadline_s=args.deadline_s)
    finally:
        cluster.stop()
        temporal.stop()
    for failure in failures:
        say(f"FAILED: {failure}")
    emit("failures", len(failures), "invariants", failed=failures)
    if failures:
        say(f"logs under {home / 'logs'} (kept)")
    elif not args.home:
        shutil.rmtree(home, ignore_errors=True)
    return 1 if failures else 0


class Overdue(Exception):
    pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--providers", type=int, default=5,
                        help="N - 2 with 2 H100 each, one with 2 A100, one with 2 L4 (N >= 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="20 jobs, a smoke test")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="the whole soak's bound (default 1800; --quick 300)")
    parser.add_argument("--grace-s", type=float, default=90.0,
                        help="how far past timeout x runs a job may end")
    parser.add_argument("--cancel-share", type=float, default=None,
                        help=f"the share of jobs cancelled (default {CANCEL_SHARE}; --quick 0.3)")
    parser.add_argument("--check-wait-s", type=float, default=20.0,
                        help="GPGPU_CHECK_WAIT_S of the soak's network (default 20)")
    parser.add_argument("--replica-wait-s", type=float, default=30.0,
                        help="GPGPU_REPLICA_WAIT_S of the soak's network (default 30)")
    parser.add_argument("--no-checks", action="store_true",
                        help="turn the network's own adaptive check runs off")
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = min(args.jobs, 20)
    if args.cancel_share is None:
        args.cancel_share = 0.3 if args.quick else CANCEL_SHARE
    args.deadline_s = args.deadline_s or (300.0 if args.quick else 1800.0)
    for name, low, high in (("jobs", 1, 10_000), ("clients", 1, 50), ("providers", 5, 50)):
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be between {low} and {high}")
    if not 10 <= args.deadline_s <= 86_400 or not 0 <= args.grace_s <= 3600:
        parser.error("--deadline-s must be 10..86400 and --grace-s 0..3600")
    if not 0 <= args.cancel_share <= 1:
        parser.error("--cancel-share must be between 0 and 1")

    def overdue(signum: int, frame: FrameType | None) -> None:
        raise Overdue(f"the soak ran past its deadline + 120 s ({args.deadline_s:.0f} s)")

    signal.signal(signal.SIGALRM, overdue)  # the watchdog: never hang, whatever hangs
    signal.alarm(int(args.deadline_s) + 120)
    home = args.home or Path(tempfile.mkdtemp(prefix="gpgpu-soak-"))
    try:
        return run(args, home)
    except Overdue as err:
        say(f"FAILED: {err}; logs under {home / 'logs'}")
        emit("failures", 1, "invariants", failed=[str(err)])
        return 1
    finally:
        signal.alarm(0)
