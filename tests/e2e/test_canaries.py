"""Known-answer canaries on a real network: after a provider's accepted run the network sends
it a job whose answer it knows. An honest provider passes and is paid by the network; one that
alters its outputs (and hashes them honestly, so storage agrees with its report) is caught
without a second provider, is not paid and loses reputation. The rate is forced to 1 here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from domain.application import Network as Ledger
from domain.canary import make_canary
from domain.ledger import CHECKS, provider_account
from domain.verification import CANARY_FRACTION, canary_rate, ever_caught
from protocol.money import cost_of_gpu_time
from tests.e2e.network import ADMIN, PROVIDER_OWNER, Network, network
from tests.support.graphql import JOB, PROVIDERS, SUBMIT
from workflows import contracts as c

pytestmark = pytest.mark.e2e

# Each provider has its own GPU model, so a job picks its provider by model.
FLEET = [
    ("honest", "1xH100:80", "1.0", []),
    ("liar", "1xA100:80", "0.5", ["--wrong-results"]),
]
CANARIES_ALWAYS = {
    "GPGPU_CANARIES": "true",
    "GPGPU_CANARY_RATE_OVERRIDE": "1",
    "GPGPU_CANARY_MAX_DELAY_S": "0",
}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("canaries"), temporal_server, FLEET,
                 CANARIES_ALWAYS) as n:
        yield n


@pytest.fixture(scope="module")
def ledger(net: Network) -> Iterator[Ledger]:
    app = Ledger(env=net.stack.settings.eventsourcing_env())
    yield app
    app.close()


def run_job(net: Network, client: str, gpu_model: str) -> dict[str, Any]:
    body = {"name": "pi", "command": "echo 3.14159 > pi.txt", "outputs": ["pi.txt"],
            "max_price_per_gpu_hour": "2", "timeout": 60,
            "resources": {"gpu_model": gpu_model}}
    result = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    job_id = result["job"]["id"]
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client=client, timeout_s=120)
    assert job["state"] == "SUCCEEDED", job["reason"]
    return {"id": job_id, **net.gql(JOB, client, id=job_id)["job"]}


async def canary_result(net: Network, job_id: str, provider_id: str) -> c.CanaryResult:
    """The canary workflow's own result; it starts just after the job finished."""
    settings = net.stack.settings  # its payloads are encrypted with the network's key
    client = await Client.connect(settings.temporal_address,
                                  data_converter=settings.temporal_converter())
    handle = client.get_workflow_handle(
        c.canary_workflow_id(job_id, provider_id), result_type=c.CanaryResult
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            await handle.describe()
            break
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
    try:
        result: c.CanaryResult = await asyncio.wait_for(handle.result(), 120)
        return result
    except WorkflowFailureError as err:
        raise AssertionError(f"the canary workflow failed: {err.cause}") from err


def providers(net: Network) -> dict[str, dict[str, Any]]:
    return {p["providerId"]: p for p in net.gql(PROVIDERS, PROVIDER_OWNER)["providers"]}


async def test_an_honest_provider_passes_a_canary_and_the_network_pays_it(
    net: Network, ledger: Ledger, temporal_server: str
) -> None:
    checks_before = ledger.balance(CHECKS)
    job = run_job(net, "ann", "H100")
    assert job["providerId"] == "honest"
    result = await canary_result(net, job["id"], "honest")
    assert result.outcome == "success", result.reason
    assert result.reason == "outputs equal the known answer"

    canary = ledger.canary(job["id"], "honest")
    assert canary is not None and canary.job_id == result.job_id != job["id"]
    assert canary.client_id not in ("ann", "network")
    # Paid its GPU time at its price, by the network, without a fee.
    seen = net.gql(JOB, ADMIN, id=canary.job_id)["job"]  # nobody signs in as a canary
    finished = next(e["data"] for e in seen["events"] if e["type"] == "ExecutionFinished")
    assert result.paid_micro == cost_of_gpu_time(finished["gpu_ms"], 1_000_000) > 0
    assert ledger.balance(CHECKS) == checks_before - result.paid_micro
    assert f"check:{canary.job_id}:honest" in ledger.account(provider_account("honest")).posted
    assert ledger.provider("honest").outcomes == ["success", "success"]
    fleet = providers(net)
    assert fleet["honest"]["earningsMicro"] == ledger.balance(provider_account("honest"))
    assert fleet["honest"]["earningsMicro"] > job["costMicro"] * 0.95  # job pay + canary pay
    assert ledger.provider("honest").reservations == {}  # the canary's GPU was released

    # The read model shows the canary as an ordinary job of its pseudonymous client.
    assert seen["state"] == "SUCCEEDED" and seen["providerId"] == "honest"
    types = [e["type"] for e in seen["events"]]
    assert types[:2] == ["JobSubmitted", "GpusAllocated"]
    assert {"InputsStaged", "OutputsUploaded", "ResultAccepted", "JobSettled"} <= set(types)
    task = make_canary(canary.seed, 1_000_000, ["process"])
    assert task is not None
    (output,) = seen["outputs"]
    assert output["key"] == f"jobs/{canary.job_id}/runs/1/{task.spec.outputs[0]}"
    # Passed: its inputs and outputs leave storage (a failed canary's stay, as evidence).
    listed = net.http.get(f"/storage/{canary.client_id}", headers=net.headers(ADMIN))
    assert listed.status_code == 200 and listed.json() == []


async def test_a_provider_with_wrong_results_fails_a_canary_unpaid(
    net: Network, ledger: Ledger, temporal_server: str
) -> None:
    checks_before = ledger.balance(CHECKS)
    job = run_job(net, "bea", "A100")  # no checks: the liar's wrong result is accepted
    assert job["providerId"] == "liar"
    result = await canary_result(net, job["id"], "liar")
    assert result.outcome == "mismatch", result.reason
    assert "the known answer is" in result.reason and result.paid_micro == 0

    assert ledger.balance(CHECKS) == checks_before  # the network paid nothing
    canary = ledger.canary(job["id"], "liar")
    assert canary is not None and canary.outcome == "mismatch"
    assert not any(t.startswith("check:") for t in ledger.account(provider_account("liar")).posted)
    outcomes = ledger.provider("liar").outcomes
    assert outcomes == ["success", "mismatch"]
    assert ever_caught(outcomes) and canary_rate(outcomes) == CANARY_FRACTION  # back to probation
    fleet = providers(net)
    assert fleet["liar"]["reputation"] < 0.5 < fleet["honest"]["reputation"]
    seen = net.gql(JOB, ADMIN, id=canary.job_id)["job"]  # nobody signs in as a canary
    assert seen["state"] == "FAILED" and "the known answer is" in seen["reason"]
    (output,) = seen["outputs"]  # the wrong output stays, the evidence behind the outcome
    task = make_canary(canary.seed, 1_000_000, ["process"])
    assert task is not None
    assert net.get(ADMIN, output["key"], space=canary.client_id) != task.answer
    assert ledger.provider("liar").reservations == {}
