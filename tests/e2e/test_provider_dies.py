"""kill -9 the provider running a job: the job finishes elsewhere and is paid for once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from domain.application import Network as DomainNetwork
from tests.e2e.network import CREDITS_MICRO, Network, network
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("failover")
    with network(home, temporal_server, [
        ("dies-a", "1xH100:80", "1.0", []),
        ("dies-b", "1xH100:80", "2.0", []),
    ]) as n:
        yield n


def test_job_survives_its_provider_being_killed(net: Network) -> None:
    body = {
        "name": "long", "max_price_per_gpu_hour": "3", "timeout": "2m",
        # Long enough to be killed mid-run; a second attempt finishes and says so.
        "command": "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done; echo ok > done.txt",
        "outputs": ["done.txt"],
    }
    result = net.gql(SUBMIT, "hank", s=body)["submitJob"]
    job_id = result["job"]["id"]
    running = net.wait_job(job_id, ("RUNNING",), client="hank", timeout_s=60)
    victim = running["providerId"]
    assert victim == "dies-a"  # the cheaper one
    child = next(c for c in net.stack.children if c.name == victim)
    time.sleep(1.0)
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait()

    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client="hank", timeout_s=120)
    assert job["state"] == "SUCCEEDED", job
    assert job["providerId"] == "dies-b"

    events = net.gql("query($id: ID!) { job(id: $id) { events { type data } } }", "hank",
                     id=job_id)["job"]["events"]
    types = [e["type"] for e in events]
    lost = next(e for e in events if e["type"] == "ProviderLost")
    assert lost["data"]["provider_id"] == "dies-a"
    assert types.count("GpusAllocated") == 2
    assert types.count("JobSettled") == 1
    allocations = [e["data"]["provider_id"] for e in events if e["type"] == "GpusAllocated"]
    assert allocations == ["dies-a", "dies-b"]

    store = DomainNetwork(env=net.stack.settings.eventsourcing_env())
    settled = next(e["data"] for e in events if e["type"] == "JobSettled")
    assert store.balance("provider:dies-a") == 0
    assert store.balance("provider:dies-b") == settled["provider_paid_micro"] > 0
    start = CREDITS_MICRO
    assert store.balance(f"client:{net.client_id('hank')}") == start - settled["charged_micro"]
    assert store.balance(f"escrow:{job_id}") == 0

    providers = {p["providerId"]: p for p in net.gql(
        "{ providers { providerId status reputation } }")["providers"]}
    assert providers["dies-a"]["reputation"] < 0.5 < providers["dies-b"]["reputation"]
    assert providers["dies-a"]["status"] in ("lost", "offline")
