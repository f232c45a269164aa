"""Matching: the pure decision, then allocation through the app (never double booked)."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from domain.application import Network
from domain.matching import Candidate, Decision, Requirements, decide, explain_gpus, score
from infra.settings import Settings
from tests.domain.support import (
    H100,
    PRICE,
    START,
    gpu,
    job_event_types,
    make_spec,
    provider_event_types,
)


def req(
    gpus: int = 1,
    model: str | None = None,
    min_mb: int = 0,
    max_price: int = 2_000_000,
) -> Requirements:
    return Requirements(
        gpus=gpus, gpu_model=model, min_gpu_memory_mb=min_mb, max_price_per_gpu_hour_micro=max_price
    )


def cand(
    pid: str,
    price: int = 1_000_000,
    reputation: float = 0.5,
    online: bool = True,
    gpus: list[dict[str, Any]] | None = None,
    free: list[int] | None = None,
) -> Candidate:
    gpus = [gpu(0)] if gpus is None else gpus
    free = [g["index"] for g in gpus] if free is None else free
    return Candidate(pid, price, reputation, online, gpus, free)


# The pick


def test_cheapest_provider_wins() -> None:
    decision = decide(
        req(),
        [cand("a", price=1_500_000), cand("b", price=900_000), cand("c", price=1_000_000)],
        set(),
    )
    assert decision.provider_id == "b"
    assert decision.price_per_gpu_hour_micro == 900_000
    assert decision.gpu_indexes == [0]
    assert decision.rejected == {}  # eligible providers that lost are not "rejected"


def test_equal_price_goes_to_the_better_reputation() -> None:
    decision = decide(
        req(),
        [cand("a", reputation=0.5), cand("b", reputation=0.9), cand("c", reputation=0.7)],
        set(),
    )
    assert decision.provider_id == "b"


def test_half_the_price_beats_a_slightly_better_reputation() -> None:
    # a: 0.5*0.5 + 0.3*0.2 = 0.31; b: 0.5*1.0 + 0.3*0.0 = 0.5
    decision = decide(
        req(), [cand("a", price=1_000_000, reputation=0.8), cand("b", price=2_000_000,
                                                               reputation=1.0)], set()
    )
    assert decision.provider_id == "a"


def test_a_much_better_reputation_beats_a_small_saving() -> None:
    # a: 0.5*0.45 + 0.3*0.9 = 0.495; b: 0.5*0.5 + 0.3*0.01 = 0.253
    decision = decide(
        req(), [cand("a", price=900_000, reputation=0.1), cand("b", reputation=0.99)], set()
    )
    assert decision.provider_id == "b"


def test_score_is_the_documented_weighted_sum() -> None:
    c = Candidate("p", 500_000, 0.75, True, [gpu(0), gpu(1)], [1], region="eu")
    # price 0.25 of max, reputation 0.75, remote, half the GPUs busy
    expected = 0.5 * 0.25 + 0.3 * 0.25 + 0.1 * 1 + 0.1 * 0.5
    assert score(req(), c, home_region="us") == pytest.approx(expected)
    assert score(req(), c, home_region="eu") == pytest.approx(expected - 0.1)


def test_full_tie_goes_to_the_lowest_provider_id() -> None:
    decision = decide(req(), [cand("zeta"), cand("alpha"), cand("mid")], set())
    assert decision.provider_id == "alpha"


def test_decision_does_not_depend_on_candidate_order() -> None:
    candidates = [
        cand("a", price=1_000_000, reputation=0.6),
        cand("b", price=1_000_000, reputation=0.6),
        cand("c", price=1_000_000, reputation=0.8),
        cand("d", price=1_600_000, reputation=0.7),
    ]
    decisions = {
        decide(req(), list(order), set()).provider_id
        for order in itertools.permutations(candidates)
    }
    assert decisions == {"c"}


def test_price_equal_to_the_maximum_is_accepted() -> None:
    decision = decide(req(max_price=1_000_000), [cand("a", price=1_000_000)], set())
    assert decision.provider_id == "a"


@pytest.mark.parametrize("wanted", ["h100", "H100", "nvidia h100", "80GB HBM3", "HbM3"])
def test_model_matches_case_insensitive_substring(wanted: str) -> None:
    decision = decide(req(model=wanted), [cand("a", gpus=[gpu(0, H100)])], set())
    assert decision.provider_id == "a"


def test_other_models_do_not_match() -> None:
    decision = decide(req(model="a100"), [cand("a", gpus=[gpu(0, H100)])], set())
    assert decision == Decision(None, rejected={"a": "no GPUs of the requested model and memory"})


def test_only_matching_gpus_are_picked_on_a_mixed_machine() -> None:
    gpus = [gpu(0, "NVIDIA A100-SXM4-40GB", 40_960), gpu(1, H100), gpu(2, H100)]
    decision = decide(req(gpus=2, model="h100"), [cand("mixed", gpus=gpus)], set())
    assert decision.gpu_indexes == [1, 2]


def test_memory_minimum() -> None:
    small, big = gpu(0, H100, 40_960), gpu(1, H100, 81_920)
    assert decide(req(min_mb=81_920), [cand("a", gpus=[small, big])], set()).gpu_indexes == [1]
    refused = decide(req(min_mb=81_921), [cand("a", gpus=[small, big])], set())
    assert refused.rejected == {"a": "no GPUs of the requested model and memory"}
    assert decide(req(min_mb=0), [cand("a", gpus=[small])], set()).gpu_indexes == [0]


def test_multi_gpu_job_needs_all_its_gpus_on_one_provider() -> None:
    one_each = [cand("a"), cand("b"), cand("c")]
    decision = decide(req(gpus=2), one_each, set())
    assert decision.provider_id is None
    assert decision.rejected == {
        p: "no GPUs of the requested model and memory" for p in ("a", "b", "c")
    }
    with_two = [*one_each, cand("d", price=1_900_000, gpus=[gpu(0), gpu(1), gpu(2)])]
    decision = decide(req(gpus=2), with_two, set())
    assert decision.provider_id == "d"
    assert decision.gpu_indexes == [0, 1]


def test_multi_gpu_job_takes_free_gpus_only() -> None:
    c = cand("a", gpus=[gpu(0), gpu(1), gpu(2), gpu(3)], free=[1, 3])
    assert decide(req(gpus=2), [c], set()).gpu_indexes == [1, 3]
    assert decide(req(gpus=3), [c], set()).rejected == {"a": "busy"}


def test_rejected_reasons() -> None:
    candidates = [
        cand("off", online=False),
        cand("full", free=[]),
        cand("pricey", price=2_000_001),
        cand("wrong", gpus=[gpu(0, "Tesla T4", 15_360)]),
        cand("lost"),
    ]
    decision = decide(req(model="H100"), candidates, {"lost"})
    assert decision.provider_id is None
    assert decision.gpu_indexes == []
    assert decision.rejected == {
        "off": "offline",
        "full": "busy",
        "pricey": "price above the job's maximum",
        "wrong": "no GPUs of the requested model and memory",
        "lost": "excluded: lost while running this job",
    }


def test_exclusion_is_reported_before_offline() -> None:
    decision = decide(req(), [cand("x", online=False)], {"x"})
    assert decision.rejected == {"x": "excluded: lost while running this job; offline"}


def test_every_reason_a_provider_is_ruled_out_is_given() -> None:
    """A 4xH100 job at price 1 and an A100 provider with 2 GPUs at price 3: its price and
    its GPUs both rule it out, and both are said, for the provider and for each GPU."""
    a100 = [gpu(0, "NVIDIA A100", 40_960), gpu(1, "NVIDIA A100", 40_960)]
    job = req(gpus=4, model="H100", max_price=1_000_000)
    decision = decide(job, [cand("a100", price=3_000_000, gpus=a100)], set())
    assert decision.rejected == {
        "a100": "price above the job's maximum; no GPUs of the requested model and memory"}
    per_gpu = explain_gpus(job, [cand("a100", price=3_000_000, gpus=a100, free=[0])], set())
    assert [g.reason for g in per_gpu] == [
        "price above the job's maximum; model NVIDIA A100 is not H100",
        "price above the job's maximum; model NVIDIA A100 is not H100; busy",
    ]
    # Offline: its GPUs' last known state (busy) is no reason; what they are still is.
    gone = explain_gpus(job, [cand("a100", online=False, gpus=a100, free=[0])], set())
    assert [g.reason for g in gone] == ["offline; model NVIDIA A100 is not H100"] * 2


def test_no_candidates() -> None:
    assert decide(req(), [], set()) == Decision(None)


# Allocation through the app


def submit(app: Network, job_id: str, **spec: Any) -> None:
    app.submit_job(job_id, "alice", make_spec(**spec))
    assert app.admit_job(job_id).admitted


def test_a_single_gpu_is_never_booked_twice(app: Network) -> None:
    app.open_client("alice", START)
    app.register_provider("solo", "eu", PRICE, [gpu(0)])
    submit(app, "job-1")
    submit(app, "job-2")
    first = app.allocate("job-1", 1, set(), {"solo"})
    second = app.allocate("job-2", 1, set(), {"solo"})
    assert (first.provider_id, first.gpu_indexes) == ("solo", [0])
    assert second.provider_id is None
    assert second.rejected == {"solo": "busy"}
    assert app.provider("solo").reservations == {"job-1": [0]}
    assert app.job("job-2").state == "QUEUED"
    assert job_event_types(app, "job-2")[-1] == "JobQueued"
    # Once the first job lets go, the second gets the GPU.
    app.release_gpus("job-1", "solo")
    third = app.allocate("job-2", 1, set(), {"solo"})
    assert (third.provider_id, third.gpu_indexes) == ("solo", [0])
    assert app.provider("solo").reservations == {"job-2": [0]}


def test_allocate_twice_returns_the_same_gpus(app: Network) -> None:
    app.open_client("alice", START)
    app.register_provider("duo", "eu", PRICE, [gpu(0), gpu(1)])
    submit(app, "job-1")
    first = app.allocate("job-1", 1, set(), {"duo"})
    again = app.allocate("job-1", 1, set(), {"duo"})
    assert again == first
    assert app.provider("duo").reservations == {"job-1": [0]}
    assert provider_event_types(app, "duo") == ["ProviderRegistered", "GpusReserved"]


def test_provider_not_heard_from_is_offline(app: Network) -> None:
    app.open_client("alice", START)
    app.register_provider("quiet", "eu", PRICE, [gpu(0)])
    submit(app, "job-1")
    decision = app.allocate("job-1", 1, set(), online=set())
    assert decision.provider_id is None
    assert decision.rejected == {"quiet": "offline"}
    assert app.provider("quiet").reservations == {}


def test_app_uses_spec_requirements(app: Network) -> None:
    app.open_client("alice", START)
    app.register_provider("t4", "eu", 100_000, [gpu(0, "Tesla T4", 15_360)])
    app.register_provider("h100", "eu", 1_500_000, [gpu(0, H100, 81_920), gpu(1, H100, 81_920)])
    app.register_provider("h100-dear", "eu", 2_500_000, [gpu(0, H100), gpu(1, H100)])
    submit(app, "job-1", resources={"gpus": 2, "gpu_model": "h100", "min_gpu_memory_gb": 80})
    decision = app.allocate("job-1", 1, set(), {"t4", "h100", "h100-dear"})
    assert decision.provider_id == "h100"
    assert decision.gpu_indexes == [0, 1]
    assert decision.rejected == {
        "t4": "no GPUs of the requested model and memory",
        "h100-dear": "price above the job's maximum",
    }


def _single_gpu_network(app: Network, jobs: int, providers: int) -> tuple[list[str], set[str]]:
    app.open_client("alice", START)
    job_ids = [f"job-{i}" for i in range(jobs)]
    for job_id in job_ids:
        submit(app, job_id, timeout=60)
    online = {f"p{i}" for i in range(providers)}
    for pid in sorted(online):
        app.register_provider(pid, "eu", PRICE, [gpu(0)])
    return job_ids, online


def _check_no_double_booking(
    app: Network, job_ids: list[str], online: set[str], decisions: list[Decision]
) -> None:
    winners = {j: d for j, d in zip(job_ids, decisions, strict=True) if d.provider_id}
    assert len(winners) == len(online)
    assert {d.provider_id for d in winners.values()} == online  # every GPU used exactly once
    for pid in online:
        reservations = app.provider(pid).reservations
        assert len(reservations) == 1
        ((job_id, indexes),) = reservations.items()
        assert indexes == [0]
        assert winners[job_id].provider_id == pid
        assert app.job(job_id).provider_id == pid
        assert app.job(job_id).state == "STAGING"
    for job_id, decision in zip(job_ids, decisions, strict=True):
        if decision.provider_id is None:
            assert decision.rejected == {pid: "busy" for pid in online}
            assert app.job(job_id).state == "QUEUED"
            assert "GpusAllocated" not in job_event_types(app, job_id)


def test_concurrent_allocations_on_a_shared_app(app: Network) -> None:
    job_ids, online = _single_gpu_network(app, jobs=8, providers=3)
    barrier = threading.Barrier(len(job_ids))

    def allocate(job_id: str) -> Decision:
        barrier.wait()
        return app.allocate(job_id, 1, set(), online)

    with ThreadPoolExecutor(len(job_ids)) as pool:
        decisions = list(pool.map(allocate, job_ids))
    _check_no_double_booking(app, job_ids, online, decisions)


def test_concurrent_allocations_from_separate_apps_on_sqlite(sqlite_settings: Settings) -> None:
    """Eight allocators, each with its own connection to one SQLite file, three GPUs."""
    env = sqlite_settings.eventsourcing_env()
    setup = Network(env=env)
    apps = [Network(env=env) for _ in range(8)]
    try:
        job_ids, online = _single_gpu_network(setup, jobs=8, providers=3)
        barrier = threading.Barrier(len(job_ids))

        def allocate(n: int) -> Decision:
            barrier.wait()
            return apps[n].allocate(job_ids[n], 1, set(), online)

        with ThreadPoolExecutor(len(job_ids)) as pool:
            decisions = list(pool.map(allocate, range(len(job_ids))))
        _check_no_double_booking(setup, job_ids, online, decisions)
    finally:
        for network in [setup, *apps]:
            network.close()


# Per-GPU explanations


def test_explain_gpus_gives_every_gpu_a_reason() -> None:
    from domain.matching import explain_gpus

    l4, h100 = ("NVIDIA L4", 23_034), (H100, 81_559)
    cands = [
        Candidate("cheap", 500_000, 0.9, True,
                  [gpu(0, *h100), gpu(1, *h100), gpu(2, *h100), gpu(3, *l4)], [0, 3],
                  suspended=(1,), degraded={2: "ECC errors: 2"}),
        Candidate("dear", 3_000_000, 0.9, True, [gpu(0, *h100)], [0]),
        Candidate("quiet", 500_000, 0.9, False, [gpu(0, *h100)], [0]),
        Candidate("far", 500_000, 0.9, True, [gpu(0, *h100)], [0], region="us"),
        Candidate("lone", 500_000, 0.9, True, [gpu(0, *h100), gpu(1, *h100)], [0],
                  region="eu"),
    ]
    wanted = Requirements(gpus=1, gpu_model="H100", min_gpu_memory_mb=0,
                          max_price_per_gpu_hour_micro=2_000_000, region=None)
    rows = {(r.provider_id, r.index): r.reason for r in explain_gpus(wanted, cands, set())}
    assert rows == {
        ("cheap", 0): "",
        ("cheap", 1): "suspended",
        ("cheap", 2): "degraded: ECC errors: 2",
        ("cheap", 3): "model NVIDIA L4 is not H100",
        ("dear", 0): "price above the job's maximum",
        ("quiet", 0): "offline",
        ("far", 0): "",
        ("lone", 0): "",
        ("lone", 1): "busy",
    }
    two = Requirements(gpus=2, gpu_model="H100", min_gpu_memory_mb=0,
                       max_price_per_gpu_hour_micro=2_000_000, region="eu")
    rows = {(r.provider_id, r.index): r.reason for r in explain_gpus(two, cands, set())}
    assert rows[("lone", 0)] == "the job needs 2 GPUs on one machine; 1 fit and are free here"
    assert rows[("far", 0)] == "in region us, not eu"


# Never satisfiable: what the providers are, not what they are doing


def test_a_spec_no_provider_could_ever_run_says_why_for_each() -> None:
    from domain.matching import unsatisfiable

    a100 = cand("a100", gpus=[gpu(0, "NVIDIA A100 80GB", 81_559), gpu(1, "NVIDIA A100", 81_559)])
    small = cand("h100", gpus=[gpu(0)], online=False)
    notice = unsatisfiable(req(gpus=4), [a100, small], "local")
    assert notice is not None
    assert notice.startswith("no provider of node local could ever run this job as specified: "
                             "it needs 4 GPUs on one machine with the process runtime")
    assert "a100: 2 of its 2 GPUs fit the job's model and memory, 4 needed" in notice
    assert "h100: 1 of its 1 GPUs fit" in notice and "until such a provider joins" in notice
    wrong = unsatisfiable(Requirements(1, "H100", 0, 2_000_000, "docker", region="us"), [a100],
                          "local")
    assert wrong is not None and "a100: in region , not us, no docker runtime, 0 of its 2" in wrong
    assert unsatisfiable(req(), [], "edge") == (
        "no provider has joined node edge yet: the job waits until one that has 1 GPU on one "
        "machine with the process runtime does")


def test_what_a_provider_may_change_or_is_doing_is_no_notice() -> None:
    """Offline, busy, too dear, too little reputation: it could run the job one day."""
    from domain.matching import unsatisfiable

    busy = cand("busy", price=9_000_000, reputation=0.0, online=False, free=[])
    assert unsatisfiable(Requirements(1, "h100", 80_000, 1_000_000, min_reputation=0.9),
                         [busy], "local") is None
    many = [cand(f"p{i}") for i in range(8)]
    notice = unsatisfiable(req(gpus=2), many, "local")
    assert notice is not None and "p4:" in notice and "p5:" not in notice
    assert "; and 3 more)" in notice


def test_the_notice_comes_and_goes_with_the_providers_registered(app: Network) -> None:
    spec = make_spec(resources={"gpus": 2, "gpu_model": "h100"})
    assert app.unsatisfiable(spec) == (
        "no provider has joined node local yet: the job waits until one that has 2 GPUs on one "
        "machine of model h100 with the process runtime does")
    app.register_provider("one", "eu", PRICE, [gpu(0)])
    notice = app.unsatisfiable(spec)
    assert notice is not None and "one: 1 of its 1 GPUs fit" in notice
    app.register_provider("two", "eu", PRICE, [gpu(0), gpu(1)])
    assert app.unsatisfiable(spec) is None


def test_full_isolation_takes_only_a_sandbox_with_control_groups_of_each_job() -> None:
    """`isolation: full` passes by a provider that limits each process alone, runs jobs
    unsandboxed, or never said; the cheaper one is passed by, with the reason."""
    from dataclasses import replace

    from domain.matching import FULL_ISOLATION, never_fits
    from domain.provider import SANDBOXES

    assert set(SANDBOXES) >= FULL_ISOLATION
    full = replace(req(), isolation="full")
    for sandbox in ("bwrap-rlimits", "none", ""):
        cheap = replace(cand("cheap", price=500_000), sandbox=sandbox)
        held = replace(cand("held", price=1_500_000), sandbox="bwrap")
        assert decide(req(), [cheap, held], set()).provider_id == "cheap"  # "any": the price
        decision = decide(full, [cheap, held], set())
        assert decision.provider_id == "held"
        why = f"sandbox {sandbox or 'undeclared'} does not hold each job in control groups"
        assert decision.rejected["cheap"].startswith(why)
        assert any(r.startswith(why) for r in never_fits(full, cheap))
    assert decide(full, [replace(cand("d"), sandbox="docker")], set()).provider_id == "d"
