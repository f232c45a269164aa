"""An outage in front of the API (a load balancer down for longer than the heartbeat
timeout, the API itself up all along) is the network's own: the run in flight bears it and
its provider is not lost. The provider reaches the API only through a proxy that the test
cuts and restores (api/dispatch.py: an API hears only while providers reach it)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.network import FAST_FAULTS, Network, network
from tests.support.graphql import SUBMIT
from tests.support.proxy import Proxy, proxy

pytestmark = pytest.mark.e2e

PROVIDER = "front-a"
# Longer than the heartbeat timeout (3 s) with room, well inside the outage grace (20 s).
OUTAGE_S = 8.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str
        ) -> Iterator[tuple[Network, Proxy]]:
    with network(tmp_path_factory.mktemp("front"), temporal_server, []) as n, \
            proxy(n.stack.settings.api_port) as front:
        direct = n.stack.env["GPGPU_API_URL"]
        n.stack.env["GPGPU_API_URL"] = front.url
        try:
            n.stack.start_provider(PROVIDER, "1xH100:80", "1.0")
        finally:
            n.stack.env["GPGPU_API_URL"] = direct
        n.wait_providers_online([PROVIDER])
        yield n, front


def test_a_run_bears_an_outage_in_front_of_the_api_and_its_provider_is_not_lost(
        net: tuple[Network, Proxy]) -> None:
    n, front = net
    assert 2 * float(FAST_FAULTS["GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S"]) < OUTAGE_S
    assert float(FAST_FAULTS["GPGPU_GPU_OUTAGE_GRACE_S"]) > OUTAGE_S
    body = {
        "name": "through-an-outage", "max_price_per_gpu_hour": "3", "timeout": "2m",
        "command": "for i in $(seq 1 14); do echo tick $i; sleep 1; done; echo ok > done.txt",
        "outputs": ["done.txt"],
    }
    job_id = n.gql(SUBMIT, "olga", s=body)["submitJob"]["job"]["id"]
    n.wait_job(job_id, ("RUNNING",), client="olga", timeout_s=60)
    time.sleep(1.0)
    front.cut()
    try:
        time.sleep(OUTAGE_S)
        # The API was up all along and heard no one: no step was judged meanwhile.
        mid = n.gql("query($id: ID!) { job(id: $id) { state events { type } } }", "olga",
                    id=job_id)["job"]
        assert "ProviderLost" not in [e["type"] for e in mid["events"]], mid
    finally:
        front.restore()

    job = n.wait_job(job_id, ("SUCCEEDED", "FAILED"), client="olga", timeout_s=90)
    assert job["state"] == "SUCCEEDED", job
    events = n.gql("query($id: ID!) { job(id: $id) { events { type data } } }", "olga",
                   id=job_id)["job"]["events"]
    types = [e["type"] for e in events]
    assert "ProviderLost" not in types, types
    assert types.count("GpusAllocated") == 1, types
    assert job["providerId"] == PROVIDER
