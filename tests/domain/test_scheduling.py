"""Scheduling: fair order, priorities, per-client caps, and the scheduler under concurrency."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from activities.scheduler import Scheduler
from domain.app_identity import Identity
from domain.application import Network
from domain.matching import Candidate, Decision, Requirements
from domain.scheduling import Waiting, fair_order, plan, positions
from infra.settings import Settings
from tests.domain.support import PRICE, all_events, event_type, gpu, make_spec

REQ = Requirements(gpus=1, gpu_model=None, min_gpu_memory_mb=0,
                   max_price_per_gpu_hour_micro=2_000_000)


def waiting(job: str, client: str, at: float, priority: int = 0, gpus: int = 1) -> Waiting:
    req = REQ if gpus == 1 else Requirements(gpus, None, 0, 2_000_000)
    return Waiting(job, 1, client, priority, at, req)


def providers(n: int, gpus_each: int = 1) -> list[Candidate]:
    return [
        Candidate(f"p{i:02d}", PRICE, 0.5, True, [gpu(g) for g in range(gpus_each)],
                  list(range(gpus_each)))
        for i in range(n)
    ]


def test_fair_share_interleaves_a_big_client_and_a_small_one() -> None:
    line = [waiting(f"a{i}", "a", i) for i in range(500)]
    line += [waiting(f"b{i}", "b", 1000 + i) for i in range(5)]
    order = [w.client_id for w in fair_order(line, {})]
    assert order[:10] == ["a", "b"] * 5  # b's five jobs are not stuck behind a's 500
    assert order[10:] == ["a"] * 495


def test_fair_share_counts_the_gpus_a_client_already_holds() -> None:
    line = [waiting("a1", "a", 1), waiting("b1", "b", 2), waiting("b2", "b", 3)]
    order = [w.job_id for w in fair_order(line, {"a": 3})]
    assert order == ["b1", "b2", "a1"]


def test_ties_go_to_the_client_served_least_recently() -> None:
    """A busy queue: every client holds one GPU, one frees and one job goes. The client that
    queued first must not win every such tie; the one served longest ago goes next."""
    def firsts(remember: bool) -> list[str]:
        line = [waiting(f"{c}{i}", c, t + i) for t, c in ((0, "a"), (100, "b"), (200, "c"))
                for i in range(3)]
        held = {"a": 1, "b": 1, "c": 1}
        served: dict[str, int] = {}
        got = []
        for turn in range(6):  # one GPU at a time, as a full queue hands them out
            first = fair_order(line, held, served=served if remember else None)[0]
            got.append(first.client_id)
            served[first.client_id] = turn
            line.remove(first)
        return got

    assert firsts(remember=True) == ["a", "b", "c", "a", "b", "c"]
    assert firsts(remember=False) == ["a", "a", "a", "b", "b", "b"]  # oldest wins each tie


def test_without_fair_share_first_come_first_served() -> None:
    line = [waiting(f"a{i}", "a", i) for i in range(3)] + [waiting("b0", "b", 10)]
    assert [w.job_id for w in fair_order(line, {}, fair_share=False)] == ["a0", "a1", "a2", "b0"]


def test_higher_priority_goes_first_even_when_newer() -> None:
    line = [waiting("old", "a", 1), waiting("urgent", "a", 5, priority=2),
            waiting("mid", "b", 3, priority=1)]
    assert [w.job_id for w in fair_order(line, {})] == ["urgent", "mid", "old"]


def test_plan_places_in_fair_order_and_says_why_the_rest_wait() -> None:
    line = [waiting(f"a{i}", "a", i) for i in range(10)] + [waiting("b0", "b", 50)]
    result = plan(line, providers(2), {})
    assert [(p.job_id, p.provider_id) for p in result.placements] == [("a0", "p00"),
                                                                        ("b0", "p01")]
    assert result.waiting[("a1", 1)] == "no eligible GPUs free"


def test_a_client_at_its_cap_waits_while_others_run() -> None:
    line = [waiting(f"a{i}", "a", i) for i in range(4)] + [waiting("b0", "b", 10)]
    result = plan(line, providers(4), {"a": 1}, max_gpus_per_client=2)
    assert sorted(p.job_id for p in result.placements) == ["a0", "b0"]
    assert result.waiting[("a1", 1)] == "client a holds 2 of its 2 GPUs"


def test_replicas_of_one_job_never_share_a_provider_in_a_round() -> None:
    line = [Waiting("j", attempt, "a", 0, 1.0, REQ) for attempt in (1, 2, 3)]
    result = plan(line, providers(2, gpus_each=4), {})
    assert sorted(p.provider_id for p in result.placements) == ["p00", "p01"]
    assert len(result.waiting) == 1


def test_replicas_of_one_job_never_share_an_owner_in_a_round() -> None:
    # p00 and p01 are one account's (cheapest first: p00, p01, p02); p02 another's.
    line = [Waiting("j", attempt, "a", 0, 1.0, REQ) for attempt in (1, 2)]
    owners = {"p00": "acct-1", "p01": "acct-1", "p02": "acct-2"}

    result = plan(line, providers(3, gpus_each=4), {}, owners=owners)

    placed = sorted(p.provider_id for p in result.placements)
    assert len(placed) == 2 and {owners[p] for p in placed} == {"acct-1", "acct-2"}, placed
    unowned = plan(line, providers(3, gpus_each=4), {}).placements
    assert {owners[p.provider_id] for p in unowned} == {"acct-1"}  # what the rule prevents


def test_a_job_too_big_for_any_machine_does_not_block_smaller_ones() -> None:
    line = [waiting("big", "a", 1, gpus=8), waiting("small", "b", 2)]
    result = plan(line, providers(2, gpus_each=2), {})
    assert [p.job_id for p in result.placements] == ["small"]
    assert positions(line, {}) == {"big": 1, "small": 2}


def test_a_decision_is_fast_among_ten_thousand_providers() -> None:
    pool = providers(10_000, gpus_each=8)
    line = [waiting(f"j{i}", f"c{i % 7}", i) for i in range(1_000)]
    started = time.perf_counter()
    result = plan(line, pool, {})
    elapsed = time.perf_counter() - started
    assert len(result.placements) == 1_000
    assert elapsed < 5.0  # about 0.1 s here; bench/matching.py measures it properly


# The scheduler on a real store, with several allocators at once


def _network(app: Network, jobs: int, clients: int, gpus: int) -> list[str]:
    for c in range(clients):
        app.open_client(f"client-{c}", 10**12)
    for p in range(gpus // 2):
        app.register_provider(f"p{p:02d}", "eu", PRICE, [gpu(0), gpu(1)])
    job_ids = []
    for n in range(jobs):
        job_id = f"job-{n:03d}"
        app.submit_job(job_id, f"client-{n % clients}", make_spec(timeout=60))
        assert app.admit_job(job_id).admitted
        job_ids.append(job_id)
    return job_ids


@pytest.mark.parametrize("jobs", [500])
def test_500_jobs_on_20_gpus_with_concurrent_schedulers_never_double_book(
    app: Network, open_app: Callable[[], Network], settings: Settings, jobs: int
) -> None:
    job_ids = _network(app, jobs=jobs, clients=5, gpus=20)
    # The memory store is one process's: there, one app with two schedulers on it.
    apps = [app] if settings.event_store == "memory" else [open_app(), open_app()]
    online = {f"p{p:02d}" for p in range(10)}
    schedulers = [Scheduler(apps[i % len(apps)], lambda: online, 0.01) for i in range(2)]
    rng = random.Random(7)
    lock = threading.Lock()
    peak: Counter[str] = Counter()
    running: set[tuple[str, int]] = set()

    def run(n: int) -> Decision:
        job_id = job_ids[n]
        scheduler = schedulers[n % 2]
        network = scheduler.network
        while True:
            got = scheduler.request(job_id, 1, set(), wait_s=2.0)
            if isinstance(got, Decision):
                break
        assert got.provider_id is not None
        slot = (got.provider_id, got.gpu_indexes[0])
        with lock:
            assert slot not in running, f"{slot} booked twice"
            running.add(slot)
            peak["max"] = max(peak["max"], len(running))
        time.sleep(rng.random() * 0.01)
        with lock:
            running.discard(slot)
        network.release_gpus(job_id, got.provider_id)
        for s in schedulers:
            s.wake()
        return got

    try:
        with ThreadPoolExecutor(40) as pool:
            decisions = list(pool.map(run, range(len(job_ids))))
    finally:
        for s in schedulers:
            s.stop()
    assert all(d.provider_id for d in decisions)
    assert peak["max"] <= 20
    _check_the_log_never_books_a_gpu_twice(app, jobs)


def _check_the_log_never_books_a_gpu_twice(app: Network, jobs: int) -> None:
    """Replay every reservation and release: a GPU is never held by two jobs at once."""
    names = {}
    holder: dict[tuple[str, int], str] = {}
    reserved = 0
    for event in all_events(app):
        kind = event_type(event)
        if kind == "ProviderRegistered":
            names[event.originator_id] = event.provider_id
        elif kind == "GpusReserved":
            pid = names[event.originator_id]
            for index in event.gpu_indexes:
                assert (pid, index) not in holder, (
                    f"GPU {index} of {pid} reserved for {event.job_id} while "
                    f"{holder[(pid, index)]} held it"
                )
                holder[(pid, index)] = event.job_id
            reserved += 1
        elif kind == "GpusReleased" and event.originator_id in names:  # not the job's note
            pid = names[event.originator_id]
            for key in [k for k, j in holder.items() if k[0] == pid and j == event.job_id]:
                del holder[key]
    assert reserved == jobs  # every job placed exactly once
    per_job: dict[str, int] = defaultdict(int)
    for event in all_events(app):
        if event_type(event) == "GpusAllocated":
            per_job[str(event.originator_id)] += 1
    assert len(per_job) == jobs and set(per_job.values()) == {1}


def test_fair_share_from_the_scheduler(app: Network) -> None:
    """Client a queues 20 jobs, then b queues 2: b's run before most of a's."""
    app.open_client("a", 10**12)
    app.open_client("b", 10**12)
    app.register_provider("p", "eu", PRICE, [gpu(0), gpu(1)])
    order: list[str] = []
    specs: list[tuple[str, str]] = [(f"a{n:02d}", "a") for n in range(20)]
    specs += [("b00", "b"), ("b01", "b")]
    for job_id, client in specs:
        app.submit_job(job_id, client, make_spec(timeout=60))
        app.admit_job(job_id)
    scheduler = Scheduler(app, lambda: {"p"}, 0.01)
    for job_id, _ in specs:  # all in line before the first round, whatever the machine's load
        scheduler.enqueue(job_id, 1, set())
    # The order is the scheduler's, taken where it places (not when each waiting thread
    # wakes, which a loaded machine reorders), and GPUs come back in the order they were
    # placed, one at a time (not when each holder's sleep ends): what the test shows is
    # then the fair-share rule, whatever the machine's load.
    order: list[str] = []
    placed = threading.Condition()
    place = app.place

    def placing(placements: Any, providers: Any, jobs: Any = None) -> list[bool]:
        written = place(placements, providers, jobs)
        with placed:
            order.extend(p.job_id for p, ok in zip(placements, written, strict=True) if ok)
            placed.notify_all()
        return written

    app.place = placing  # type: ignore[method-assign]

    def run(job_id: str) -> None:
        assert isinstance(scheduler.request(job_id, 1, set(), wait_s=60.0), Decision)

    try:
        with ThreadPoolExecutor(len(specs)) as pool:
            waiting = [pool.submit(run, j) for j, _ in specs]
            for n in range(len(specs)):  # give back the GPUs of the n-th job placed
                with placed:
                    assert placed.wait_for(lambda n=n: len(order) > n, timeout=60), order
                    job_id = order[n]
                app.release_gpus(job_id, "p")
                scheduler.wake()
            for done in waiting:
                done.result(timeout=60)
    finally:
        scheduler.stop()
    # With everyone in line, the first round alternates: a, b; then each GPU given back goes
    # to whichever client holds fewer: a00 b00, then a01 (a holds none), b01 (b holds none).
    assert order[:4] == ["a00", "b00", "a01", "b01"], order


def test_whom_another_scheduler_served_counts_in_the_tie_break(
    app: Network, open_app: Callable[[], Network], settings: Settings
) -> None:
    """Two control workers: one gives client a a GPU (and a's job ends); on the other, a's
    next job and b's wait with both clients holding nothing. b goes first there: a was
    served more recently, though not by this worker; a's job is also the older one."""
    app.open_client("a", 10**12)
    app.open_client("b", 10**12)
    app.register_provider("p", "eu", PRICE, [gpu(0)])
    for job_id, client in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        app.submit_job(job_id, client, make_spec(timeout=60))
        app.admit_job(job_id)
    other = app if settings.event_store == "memory" else open_app()
    here, there = Scheduler(app, lambda: {"p"}, 0.01), Scheduler(other, lambda: {"p"}, 0.01)
    here.load_node("local")  # a long-lived worker knows the node before the others' rounds

    there.enqueue("a1", 1, set())
    assert there.run_round() == 1
    other.release_gpus("a1", "p")
    here.enqueue("a2", 1, set())
    here.enqueue("b1", 1, set())
    assert here.run_round() == 1
    assert app.job("b1").allocations == {1: "p"}
    assert app.job("a2").allocations == {}


def test_the_round_index_agrees_with_assess() -> None:
    """The grouped filter in scheduling ranks exactly the providers `assess` would take."""
    from domain.matching import assess
    from domain.scheduling import _Pool

    rng = random.Random(3)
    models = [("NVIDIA H100 80GB HBM3", 81_559), ("NVIDIA L4", 23_034), ("Tesla T4", 15_360)]
    pool_members = []
    for n in range(300):
        model, memory = rng.choice(models)
        count = rng.randint(1, 4)
        pool_members.append(Candidate(
            f"p{n:03d}", rng.randrange(100_000, 3_000_000), rng.random(), rng.random() < 0.9,
            [gpu(i, model, memory) for i in range(count)], list(range(count)),
            runtimes=rng.choice([("process",), ("process", "docker")]),
            region=rng.choice(["eu", "us"]),
            sandbox=rng.choice(["bwrap", "bwrap-rlimits", "docker", "none", ""]),
        ))
    pool = _Pool(pool_members, "eu")
    for _ in range(200):
        req = Requirements(
            gpus=rng.randint(1, 4), gpu_model=rng.choice([None, "h100", "L4", "t4", "a100"]),
            min_gpu_memory_mb=rng.choice([0, 20_000, 80_000]),
            max_price_per_gpu_hour_micro=rng.randrange(100_000, 3_000_000),
            runtime=rng.choice(["process", "docker"]),
            queue_models=rng.choice([(), ("H100", "L4")]),
            region=rng.choice([None, "eu", "us"]), min_reputation=rng.choice([0.0, 0.5]),
            isolation=rng.choice(["any", "full"]),
        )
        expected = [a.provider_id for a in sorted(
            (assess(req, c, set(), "eu") for c in pool_members),
            key=lambda a: (a.score, a.provider_id),
        ) if a.eligible]
        assert pool.ranked(req) == expected


def test_a_job_another_scheduler_placed_is_not_reserved_again(app: Network) -> None:
    """Two schedulers saw the same waiting job: the second placement books nothing."""
    from domain.scheduling import Placement

    app.open_client("a", 10**12)
    app.register_provider("p1", "eu", PRICE, [gpu(0)])
    app.register_provider("p2", "eu", PRICE, [gpu(0)])
    app.submit_job("twice", "a", make_spec(timeout=60))
    app.admit_job("twice")
    first = app.place([Placement("twice", 1, "a", "p1", [0], PRICE)], {"p1": app.provider("p1")})
    late = app.place([Placement("twice", 1, "a", "p2", [0], PRICE)], {"p2": app.provider("p2")})
    assert first == [True] and late == [False]
    assert app.provider("p2").reservations == {}
    assert app.job("twice").allocations == {1: "p1"}


def _replicated_job(app: Network, providers: list[str]) -> None:
    app.open_client("a", 10**12)
    for pid in providers:
        app.register_provider(pid, "eu", PRICE, [gpu(0)])
    app.submit_job("rep", "a", make_spec(timeout=60, verification={"replicas": 2}))
    app.admit_job("rep")


def test_a_replica_waiting_since_before_its_sibling_ran_never_lands_where_it_ran(
    app: Network,
) -> None:
    """Both replicas wait from the start (their allocations run side by side, so neither
    knew where the other would run). The first runs on p1 and gives its GPU back at once:
    the second must not take that GPU, but wait for another provider (the soak saw three
    replicas of one job run one after the other on one provider, "3 runs agree")."""
    _replicated_job(app, ["p1"])
    scheduler = Scheduler(app, lambda: {"p1", "p2"}, 0.01)
    scheduler.enqueue("rep", 1, set())
    scheduler.enqueue("rep", 2, set())
    assert scheduler.run_round() == 1
    first = app.job("rep").allocations
    assert list(first.values()) == ["p1"], first
    app.release_gpus("rep", "p1")  # the run finished (bounded waits: released at once)
    assert scheduler.run_round() == 0
    assert app.job("rep").allocations == first
    app.register_provider("p2", "eu", PRICE, [gpu(0)])
    assert scheduler.run_round() == 1
    assert sorted(app.job("rep").allocations.values()) == ["p1", "p2"]


def test_a_placement_where_a_sibling_replica_ran_is_refused(app: Network) -> None:
    """However the scheduler's copies lag, the store does not place a replica on a
    provider (or an owner) that ran another of the job's runs; a lost one's does not count."""
    from domain.scheduling import Placement

    _replicated_job(app, ["p1", "p2", "p3"])
    identity = Identity.beside(app)  # owners are identity's records, in the same store
    owner = identity.create_user("owner@example.com", "a long password 1", ["provider"], 0.0)
    for pid in ("p1", "p2"):
        identity.claim("provider", pid, owner.id)
    assert app.place([Placement("rep", 1, "a", "p1", [0], PRICE)],
                     {"p1": app.provider("p1")}) == [True]
    app.release_gpus("rep", "p1")
    for pid in ("p1", "p2"):  # the same provider, another of its owner's
        assert app.place([Placement("rep", 2, "a", pid, [0], PRICE)],
                         {pid: app.provider(pid)}) == [False], pid
        assert app.provider(pid).reservations == {}
    app.provider_lost("rep", 1, "p1", "stopped answering")
    assert app.place([Placement("rep", 2, "a", "p2", [0], PRICE)],
                     {"p2": app.provider("p2")}) == [True]
    assert app.job("rep").allocations == {1: "p1", 2: "p2"}


def test_a_provider_the_run_avoids_is_its_last_resort() -> None:
    """A run whose provider was lost once goes back there only when no other can take it."""
    cheap, dear = providers(2)  # p00 scores best (same price, listed first)
    avoiding = Waiting("j", 2, "a", 0, 0.0, REQ, avoided=frozenset({"p00"}))
    (placed,) = plan([avoiding], [cheap, dear], {}).placements
    assert placed.provider_id == "p01"
    busy = Candidate("p01", PRICE, 0.5, True, [gpu(0)], [])  # no free GPU on the other
    (placed,) = plan([avoiding], [cheap, busy], {}).placements
    assert placed.provider_id == "p00"
    alone = plan([avoiding], [cheap], {}).placements  # back online, the only one that fits
    assert [p.provider_id for p in alone] == ["p00"]
    gone = replace(cheap, online=False)  # not back yet: nothing to place on
    assert plan([avoiding], [gone], {}).placements == []
