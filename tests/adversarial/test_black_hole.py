"""A black-hole provider: registered and heartbeating at the lowest price, it never takes
what it is given, so that every job is placed on it first and waits its pickup bound.

Against a real network (real Temporal, API, control worker, an honest agent); the black
hole is a process that holds a provider key, registers and beats, and never polls. After
the run lost with it, it rests (domain/resting.py): the next job goes straight to the
honest provider, whatever the owner's own jobs do on its other providers (a success on
one's own job ends no rest), and so does a job placed on a fresh provider id of the same
account.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.rogue import Rogue
from tests.e2e.network import Network, network
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e

SPEC = {"name": "bh", "max_price_per_gpu_hour": "3", "timeout": "1m",
        "command": "echo done > out.txt", "outputs": ["out.txt"]}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home: Path = tmp_path_factory.mktemp("black-hole")
    with network(home, temporal_server, [("bh-honest", "1xH100:80", "2.0", [])]) as n:
        yield n


def placements(net: Network, client: str = "bh-client", spec: dict[str, Any] = SPEC
               ) -> list[str]:
    """The provider of each allocation of a job run to its end."""
    result = net.gql(SUBMIT, client, s=spec)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    job_id = result["job"]["id"]
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client=client, timeout_s=120)
    assert job["state"] == "SUCCEEDED", job
    events = net.gql("query($id: ID!) { job(id: $id) { events { type data } } }",
                     client, id=job_id)["job"]["events"]
    return [e["data"]["provider_id"] for e in events if e["type"] == "GpusAllocated"]


def test_a_black_hole_provider_costs_one_job_then_rests_and_so_do_its_new_ids(
        net: Network) -> None:
    net.sign_up("bh-client", ["client"])
    net.sign_up("hole-owner", ["client", "provider"])  # it runs jobs of its own too
    hole = Rogue(net, "hole-owner", "hole-1", 1)  # one micro-credit a GPU-hour
    # And a real agent of the same account, of a model no other job here asks for.
    net.stack.env["GPGPU_API_KEY"] = net.api_key("hole-owner", ["provider"])
    net.stack.start_provider("hole-agent", "1xBHX:80", "3.5")
    try:
        net.wait_providers_online(["hole-1", "hole-agent"])
        # The first job is placed on it (the cheapest) and comes back when it is not
        # picked up: the one job a black hole costs.
        assert placements(net) == ["hole-1", "bh-honest"]
        # The owner's own job succeeds on its own agent (its last resort, the only BHX):
        # a success that ends no rest (it vouches for nothing).
        own = {**SPEC, "max_price_per_gpu_hour": "4", "resources": {"gpu_model": "BHX"}}
        assert placements(net, "hole-owner", own) == ["hole-agent"]

        net.wait_providers_online(["hole-1"])  # its heartbeats bring it back online
        # The explanation says so: the cheapest offer, resting, comes last.
        offers = net.gql("query($s: JSON!) { explain(spec: $s) { ... on Explanation {"
                         " eligible { providerId restingUntil } } } }", "bh-client",
                         s=SPEC)["explain"]["eligible"]
        assert [o["providerId"] for o in offers] == ["bh-honest", "hole-1"], offers
        assert offers[0]["restingUntil"] is None and offers[1]["restingUntil"], offers
        assert placements(net) == ["bh-honest"]

        # A fresh id of the same account is no way round: the owner rests.
        fresh = Rogue(net, "hole-owner", "hole-2", 1)
        try:
            net.wait_providers_online(["hole-2"])
            assert placements(net) == ["bh-honest"]
        finally:
            fresh.close()
        rest = net.gql('{ provider(providerId: "hole-1") { status } }', "hole-owner")
        assert rest["provider"]["status"] == "online", rest  # resting, not offline
    finally:
        hole.close()
