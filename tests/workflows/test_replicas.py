"""Replicas on distinct providers, judged by majority, and the tie-break when two disagree:
who runs, who is paid, whose reputation records a mismatch. The bounded waits of these runs
(a replica or tie-break that finds no provider): test_bounded_waits.py. The same against a
real network: tests/liveness/test_bounded_checks.py, tests/reliability/test_replicas.py.
"""

from __future__ import annotations

from tests.workflows.stub_network import Start, StubNetwork
from workflows import contracts as c

THREE = ["p1", "p2", "p3"]


def outcomes(net: StubNetwork) -> dict[str, str]:
    return {r.provider_id: r.outcome for r in net.called(c.RECORD_REPUTATION)}


def paid(net: StubNetwork) -> dict[str, tuple[int, str]]:
    (settle,) = net.called(c.SETTLE_JOB)
    assert settle.payments is not None, "replicas settle by payment lines"
    return {p.provider_id: (p.gpu_ms, p.payer) for p in settle.payments}


async def test_two_replicas_that_agree_run_on_distinct_providers_and_both_are_paid(
    start: Start,
) -> None:
    net = StubNetwork(replicas=2)
    result = await (await start(net)).result()
    assert result.state == "SUCCEEDED", result.reason
    # The replicas are placed at once, so which attempt lands where is a race; the job's
    # provider is the first run's.
    assert result.provider_id == net.allocations[1]
    runs = {e.attempt: e.provider_id for e in net.called(c.EXECUTE_JOB)}
    assert runs == net.allocations and set(runs.values()) == {"p1", "p2"}
    (verify,) = net.called(c.VERIFY_JOB)
    assert [verify.provider_id, *(o.provider_id for o in verify.others)] == [runs[1], runs[2]]
    assert paid(net) == {"p1": (1000, "client"), "p2": (1000, "client")}
    assert outcomes(net) == {"p1": "success", "p2": "success"}
    # One reputation outcome per run (the key names the attempt), every GPU released.
    assert sorted(r.job_id for r in net.called(c.RECORD_REPUTATION)) == [
        f"{result.job_id}#1", f"{result.job_id}#2"]
    assert sorted(r.provider_id for r in net.called(c.RELEASE_GPUS)) == ["p1", "p2"]


async def test_three_replicas_outvote_a_liar_who_is_not_paid(start: Start) -> None:
    """p2's output differs from the other two: it is not paid, and not blamed (the client's
    command could have written another answer there on purpose: a majority is no evidence
    against a provider): it gets `outvoted`, which is not in its reputation score but puts
    it back on probation (its next results are all checked); a known-answer canary is asked
    for it at once (draw 0)."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), replicas=3, liars={"p2"})
    result = await (await start(net)).result()
    assert result.state == "SUCCEEDED", result.reason
    honest = min(a for a, p in net.allocations.items() if p != "p2")
    assert result.provider_id == net.allocations[honest]  # the first accepted run's
    assert paid(net) == {"p1": (1000, "client"), "p3": (1000, "client")}
    assert outcomes(net) == {"p1": "success", "p2": "outvoted", "p3": "success"}  # p2 unpaid
    assert ("p2", 0.0) in [(r.provider_id, r.draw) for r in net.called(c.PLAN_CANARY)]
    assert sorted(r.provider_id for r in net.called(c.RELEASE_GPUS)) == THREE


async def test_three_replicas_with_no_majority_fail_the_job_blame_no_one_and_the_client_pays(
    start: Start,
) -> None:
    """Three runs on three owners, three different outputs: the job, not a provider, is
    what cannot be trusted (a nondeterministic job declared reproducible frames no one).
    Nobody is blamed or rewarded, and the client pays for the runs it asked for."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), replicas=3, liars={"p2"},
                      answers={"p3": "e" * 64})
    result = await (await start(net)).result()
    assert (result.state, result.reason) == ("FAILED", "no majority among 3 runs")
    assert paid(net) == {p: (1000, "client") for p in THREE}
    (settle,) = net.called(c.SETTLE_JOB)
    assert not any(p.withheld for p in settle.payments or [])
    assert outcomes(net) == {}


async def test_two_replicas_that_disagree_are_decided_by_a_tie_break_the_client_pays(
    start: Start,
) -> None:
    net = StubNetwork(providers=THREE, placeable=set(THREE), replicas=2, liars={"p2"})
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p1"), result.reason
    first, final = net.called(c.VERIFY_JOB)
    assert len(first.others) == 1 and len(final.others) == 2  # the third run joins the vote
    tie_break = net.called(c.ALLOCATE_GPUS)[-1]
    assert (tie_break.attempt, sorted(tie_break.excluded_provider_ids)) == (3, ["p1", "p2"])
    assert paid(net) == {"p1": (1000, "client"), "p3": (1000, "client")}
    assert outcomes(net) == {"p1": "success", "p2": "outvoted", "p3": "success"}  # p2 unpaid
    assert sorted(r.provider_id for r in net.called(c.RELEASE_GPUS)) == THREE


async def test_the_networks_check_that_disagrees_is_decided_by_a_tie_break_it_pays(
    start: Start,
) -> None:
    """One run, the network's own check disagrees: the network pays for both of its runs."""
    net = StubNetwork(providers=THREE, placeable=set(THREE), run_check=True, liars={"p2"})
    result = await (await start(net)).result()
    assert (result.state, result.provider_id) == ("SUCCEEDED", "p1"), result.reason
    assert paid(net) == {"p1": (1000, "client"), "p3": (1000, "network")}
    assert outcomes(net) == {"p1": "success", "p2": "outvoted", "p3": "success"}  # p2 unpaid
