"""Floods from accounts that are free to open, against a real network (API, control worker;
no provider agent, so every job waits in its queue): a submission the balance cannot hold
in escrow is refused at once and records nothing, a client's live jobs are capped, and so
are the provider ids one account may register (docs/security.md rows 62a-62c).

The network runs with small caps (GPGPU_MAX_LIVE_JOBS_PER_CLIENT,
GPGPU_MAX_PROVIDERS_PER_ACCOUNT, GPGPU_MAX_SUBMISSIONS_PER_CLIENT_PER_MINUTE);
tests/liveness/test_quotas.py pins the defaults.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from domain.application import Network as DomainNetwork
from domain.job import Job
from tests.e2e.network import CREDITS_MICRO, Network, network
from tests.support.graphql import CANCEL, REGISTER_PROVIDER, SIGN_UP, SUBMIT

pytestmark = pytest.mark.e2e

LIVE_JOBS = 3
PROVIDERS = 3
PER_MINUTE = 5  # jobs one client may submit in a minute
# 1 GPU for 60 s at 3 credits an hour: what escrow holds for it.
WAITS = {"name": "waits", "command": "true", "max_price_per_gpu_hour": "3", "timeout": 60}
HELD_MICRO = 50_000


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("floods"), temporal_server, [], {
        "GPGPU_MAX_LIVE_JOBS_PER_CLIENT": str(LIVE_JOBS),
        "GPGPU_MAX_PROVIDERS_PER_ACCOUNT": str(PROVIDERS),
        "GPGPU_MAX_SUBMISSIONS_PER_CLIENT_PER_MINUTE": str(PER_MINUTE),
    }) as n:
        yield n


def jobs_recorded(net: Network, client_id: str, after: int) -> list[str]:
    """The ids of the jobs recorded in the event store for this client since `after`."""
    app = DomainNetwork(env=net.stack.settings.eventsourcing_env())
    try:
        found = []
        for n in app.recorder.select_notifications(start=after + 1, limit=10_000):
            if n.topic.endswith("Job.JobSubmitted"):
                event = app.mapper.to_domain_event(n)
                assert isinstance(event, Job.JobSubmitted)
                if event.client_id == client_id:
                    found.append(event.job_id)
        return found
    finally:
        app.close()


def event_position(net: Network) -> int:
    app = DomainNetwork(env=net.stack.settings.eventsourcing_env())
    try:
        return app.recorder.max_notification_id() or 0
    finally:
        app.close()


def submitted(answer: dict[str, Any]) -> str:
    assert answer["__typename"] == "JobSubmitted", answer
    return str(answer["job"]["id"])


def test_a_free_accounts_job_is_refused_at_once_and_nothing_recorded(net: Network) -> None:
    r = net.http.post("/graphql", json={"query": SIGN_UP, "variables": {
        "e": "free@floods.test", "p": "a password", "r": ["client"]}})
    session = r.json()["data"]["signUp"]
    client_id = session["user"]["clientId"]
    before = event_position(net)
    with httpx.Client(base_url=net.url, timeout=30,
                      headers={"Authorization": f"Bearer {session['token']}"}) as free:
        for _ in range(5):
            body = free.post("/graphql", json={"query": SUBMIT, "variables": {"s": WAITS}})
            assert body.json()["data"]["submitJob"] == {
                "__typename": "SpecRejected", "errors": [{"field": "balance", "message": (
                    f"the job holds up to {HELD_MICRO} micro-credits in escrow until it "
                    "settles (its GPUs for its whole timeout at its max price); your "
                    "balance is 0 micro-credits")}]}, body.json()
        listed = free.post("/graphql", json={"query": "{ jobs { id } }"}).json()
        assert listed["data"]["jobs"] == [], listed
    # No JobSubmitted, so no workflow either: the API starts one only for a recorded job.
    assert jobs_recorded(net, client_id, before) == []


def test_a_job_beyond_a_paying_accounts_balance_is_refused_before_escrow(
    net: Network,
) -> None:
    huge = {**WAITS, "timeout": "7d", "max_price_per_gpu_hour": "1",
            "resources": {"gpus": 8}, "verification": {"replicas": 2}}
    answer = net.gql(SUBMIT, "payer", s=huge)["submitJob"]
    assert answer["__typename"] == "SpecRejected", answer
    [error] = answer["errors"]
    assert error["field"] == "balance", error
    # 8 GPUs x 7 days x 1 credit an hour, for each of 3 runs (2 replicas and a tie-break).
    assert error["message"].startswith("the job holds up to 4032000000 micro-credits"), error
    assert error["message"].endswith(
        f"for each of its 3 runs); your balance is {CREDITS_MICRO} micro-credits"), error
    # The account as the read model shows it, once it has the grant made at sign-up (made
    # in the ledger directly, so shown a moment later): nothing was put in escrow.
    untouched = {"balanceMicro": CREDITS_MICRO, "escrowMicro": 0}
    deadline = time.monotonic() + 10
    while (shown := net.gql("{ account { balanceMicro escrowMicro } }", "payer")["account"]
           ) != untouched and time.monotonic() < deadline:
        time.sleep(0.1)
    assert shown == untouched


def test_a_clients_live_jobs_are_capped(net: Network) -> None:
    ids = [submitted(net.gql(SUBMIT, "busy", s=WAITS)["submitJob"]) for _ in range(LIVE_JOBS)]
    before = event_position(net)
    refused = net.gql(SUBMIT, "busy", s=WAITS)["submitJob"]
    assert refused == {"__typename": "SpecRejected", "errors": [{"field": "jobs", "message": (
        f"at most {LIVE_JOBS} live jobs per client; wait for some to end")}]}, refused
    assert jobs_recorded(net, net.client_id("busy"), before) == []
    # Another client is not held up by this one's jobs.
    other = submitted(net.gql(SUBMIT, "calm", s=WAITS)["submitJob"])
    # One ends: there is room for one more.
    assert net.gql(CANCEL, "busy", id=ids[0])["cancelJob"]["__typename"] == "Job"
    net.wait_job(ids[0], ("CANCELLED",), "busy")
    ids[0] = submitted(net.gql(SUBMIT, "busy", s=WAITS)["submitJob"])
    for client, job_id in [*(("busy", i) for i in ids), ("calm", other)]:
        net.gql(CANCEL, client, id=job_id)


def test_a_client_that_submits_and_cancels_in_a_loop_is_held_to_its_rate(
        net: Network) -> None:
    # Each job cancelled at once is refunded in full and no longer live, yet each was
    # recorded and started a workflow: the rate bounds that.
    for _ in range(PER_MINUTE):
        job_id = submitted(net.gql(SUBMIT, "hasty", s=WAITS)["submitJob"])
        assert net.gql(CANCEL, "hasty", id=job_id)["cancelJob"]["__typename"] == "Job"
        net.wait_job(job_id, ("CANCELLED",), "hasty")
    before = event_position(net)
    refused = net.gql(SUBMIT, "hasty", s=WAITS)["submitJob"]
    assert refused == {"__typename": "SpecRejected", "errors": [{"field": "jobs", "message": (
        f"at most {PER_MINUTE} jobs a minute per client; try again in a few seconds")}]}, refused
    assert jobs_recorded(net, net.client_id("hasty"), before) == []


def register(http: httpx.Client, provider_id: str) -> dict[str, Any]:
    r = http.post("/graphql", json={"query": REGISTER_PROVIDER, "variables": {"input": {
        "node": "local", "providerId": provider_id, "region": "local",
        # Dearer than any job here would pay: none is placed on these.
        "pricePerGpuHourMicro": 50_000_000, "runtimes": ["process"],
        "gpus": [{"index": 0, "model": "H100", "memoryMb": 81920,
                  "uuid": f"GPU-{provider_id}"}]}}})
    r.raise_for_status()
    assert "errors" not in r.json(), r.json()
    return dict(r.json()["data"]["registerProvider"])


def test_an_account_registers_at_most_its_providers(net: Network) -> None:
    net.sign_up("fleet", ["provider"])
    key = net.api_key("fleet", ["provider"])
    with httpx.Client(base_url=net.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as fleet:
        for n in range(PROVIDERS):
            assert register(fleet, f"fleet-{n}")["__typename"] == "Provider"
        assert register(fleet, "fleet-extra") == {
            "__typename": "FieldError", "field": "providerId", "message": (
                f"an account owns at most {PROVIDERS} providers and this one owns "
                f"{PROVIDERS}; register again under a provider id it owns")}
        # Registering again under an id it owns is no new provider.
        assert register(fleet, "fleet-0")["__typename"] == "Provider"
    listed = {p["providerId"] for p in net.gql("{ providers { providerId } }")["providers"]}
    assert {f"fleet-{n}" for n in range(PROVIDERS)} <= listed
    assert "fleet-extra" not in listed
