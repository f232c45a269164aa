"""Verified results from untrusted providers: replicas and a quorum, a verifier, the network's
own adaptive checks. One provider here cheats in the way storage cannot see: it alters its
outputs and hashes them honestly, so only comparing runs catches it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.network import ADMIN, Network, network
from tests.support.graphql import JOB, PROVIDERS, SUBMIT

pytestmark = pytest.mark.e2e

# The liar is the cheapest, so it is always picked first.
FLEET = [
    ("liar", "1xH100:80", "0.5", ["--wrong-results"]),
    ("honest-a", "1xH100:80", "1.0", []),
    ("honest-b", "1xH100:80", "1.5", []),
]


# Each of its own account: a job's runs that check each other go to distinct owners.
OWNERS = {"liar": "owner-liar", "honest-a": "owner-a", "honest-b": "owner-b"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("verify"), temporal_server, FLEET,
                 owners=OWNERS) as n:
        yield n


def run_job(net: Network, client: str, **extra: Any) -> dict[str, Any]:
    body = {"name": "pi", "command": "echo 3.14159 > pi.txt", "outputs": ["pi.txt"],
            "max_price_per_gpu_hour": "2", "timeout": 60, **extra}
    result = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    job_id = result["job"]["id"]
    net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client=client, timeout_s=120)
    return {"id": job_id, **net.gql(JOB, client, id=job_id)["job"]}


def providers(net: Network) -> dict[str, dict[str, Any]]:
    return {p["providerId"]: p for p in net.gql(PROVIDERS, ADMIN)["providers"]}


def liar_detail(net: Network, timeout_s: float = 15.0) -> dict[str, Any]:
    """The liar's reputation detail, once its `outvoted` outcome has been projected."""
    deadline = time.monotonic() + timeout_s
    while True:
        detail = net.gql('{ provider(providerId: "liar") { reputationDetail {'
                         ' outvoted } } }',
                         ADMIN)["provider"]["reputationDetail"]
        if detail["outvoted"] > 0 or time.monotonic() > deadline:
            return dict(detail)
        time.sleep(0.2)


def test_two_replicas_disagree_and_a_third_decides(net: Network) -> None:
    job = run_job(net, "ann", verification={"replicas": 2})
    assert job["state"] == "SUCCEEDED", job["reason"]
    allocated = [e["data"]["provider_id"] for e in job["events"] if e["type"] == "GpusAllocated"]
    assert allocated[:2] == ["liar", "honest-a"] and allocated[2] == "honest-b"
    assert "1 of 3 runs disagreed and were rejected" in job["reason"]
    accepted = next(e["data"] for e in job["events"] if e["type"] == "ResultAccepted")
    assert accepted["provider_id"] in ("honest-a", "honest-b")
    content = net.get("ann", job["outputs"][0]["key"])
    assert content == b"3.14159\n"
    fleet = providers(net)
    assert fleet["liar"]["earningsMicro"] == 0
    # Outvoted, not paid, but not blamed: a majority of the client's command is no evidence
    # against a provider (tests/adversarial/test_framing.py); a canary would be. It is
    # recorded `outvoted`: back on probation (every result checked), its score as it was.
    assert fleet["liar"]["reputation"] == 0.5 < fleet["honest-a"]["reputation"]
    assert liar_detail(net)["outvoted"] == pytest.approx(1.0, rel=1e-6)
    settled = next(e["data"] for e in job["events"] if e["type"] == "JobSettled")
    assert settled["charged_micro"] == job["costMicro"] > 0  # two accepted runs, paid by ann


def test_a_verifier_command_accepts_or_rejects_the_outputs(net: Network) -> None:
    good = run_job(net, "bea", verification={"replicas": 1,
                                             "verifier": "grep -q '^3.14' pi.txt"},
                   resources={"min_reputation": 0.51})  # the providers with a success
    assert good["state"] == "SUCCEEDED", good["reason"]
    runs = [e["data"]["provider_id"] for e in good["events"] if e["type"] == "GpusAllocated"]
    assert len(runs) == 2 and runs[0] != runs[1]  # the verifier ran on another provider
    bad = run_job(net, "bea", verification={"verifier": "grep -q '^2.71' pi.txt"},
                  resources={"min_reputation": 0.51})
    assert bad["state"] == "FAILED"
    assert bad["reason"].startswith("the verifier rejected the outputs (exited 1)")


def test_bad_verification_requests_are_refused(net: Network) -> None:
    body = {"name": "x", "command": "true", "max_price_per_gpu_hour": "1",
            "verification": {"replicas": 9, "comparator": {"kind": "fuzzy"}}}
    result = net.gql(SUBMIT, "cy", s=body)["submitJob"]
    fields = {e["field"] for e in result["errors"]}
    assert fields == {"verification.replicas", "verification.comparator.kind"}


def test_the_network_checks_a_new_provider_on_its_own_and_pays_for_it(
    tmp_path_factory: pytest.TempPathFactory, temporal_server: str
) -> None:
    home = tmp_path_factory.mktemp("adaptive")
    with network(home, temporal_server, FLEET, {"GPGPU_ADAPTIVE_CHECKS": "true"},
                 owners=OWNERS) as net:
        # No verification asked for; the job is reproducible, so the network may compare.
        job = run_job(net, "dee", verification={"reproducible": True})
        assert job["state"] == "SUCCEEDED", job["reason"]
        allocated = [e["data"]["provider_id"] for e in job["events"]
                     if e["type"] == "GpusAllocated"]
        assert allocated == ["liar", "honest-a", "honest-b"]  # new providers are on probation
        assert net.get("dee", job["outputs"][0]["key"]) == b"3.14159\n"
        # The liar's run is not paid; the client pays for the one run whose result it keeps
        # (the network's check, honest-a's), never nothing for a result.
        assert job["costMicro"] > 0
        fleet = providers(net)
        assert fleet["liar"]["earningsMicro"] == 0
        assert fleet["honest-a"]["earningsMicro"] > 0 and fleet["honest-b"]["earningsMicro"] > 0
        assert fleet["honest-a"]["earningsMicro"] <= job["costMicro"]  # less the fee
        from domain.application import Network as Ledger

        ledger = Ledger(env=net.stack.settings.eventsourcing_env())
        assert ledger.balance("protocol:verification") == -fleet["honest-b"]["earningsMicro"]


def test_reputation_can_be_recomputed_from_the_log(net: Network) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "GPGPU_HOME": str(net.stack.home)}
    done = subprocess.run(
        [sys.executable, "-m", "ops", "admin", "recompute-reputation", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = {p["provider_id"]: p for p in json.loads(done.stdout)["providers"]}
    assert report["honest-a"]["outcomes"] >= 1 and report["honest-a"]["recomputed"] > 0.5
    assert all(p["matches"] for p in report.values())
