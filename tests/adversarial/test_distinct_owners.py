"""One owner cannot agree with itself: a job's replicas run on providers of distinct owners.

Two cheap providers of one account and a dearer one of another, real agents all. Without
the rule both replicas would go to the cheap pair, and one owner's two machines would
form the quorum that decides whether that owner is paid.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.network import PROVIDER_OWNER, Network, network
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("owners")
    with network(home, temporal_server, [
        ("same-1", "1xH100:80", "1.0", []),
        ("same-2", "1xH100:80", "1.0", []),
    ]) as n:
        n.sign_up("other-owner", ["provider"])
        n.stack.env["GPGPU_API_KEY"] = n.api_key("other-owner", ["provider"])
        n.stack.start_provider("other-1", "1xH100:80", "2.0")
        n.wait_providers_online(["other-1"])
        yield n


def test_two_providers_of_one_account_never_both_serve_one_jobs_replicas(net: Network) -> None:
    spec = {"name": "pair", "max_price_per_gpu_hour": "3", "timeout": "1m",
            "command": "echo same > out.txt", "outputs": ["out.txt"],
            "verification": {"replicas": 2}}
    result = net.gql(SUBMIT, "quinn", s=spec)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    job_id = result["job"]["id"]

    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client="quinn", timeout_s=120)

    assert job["state"] == "SUCCEEDED", job
    events = net.gql("query($id: ID!) { job(id: $id) { events { type data } } }", "quinn",
                     id=job_id)["job"]["events"]
    placed = sorted(e["data"]["provider_id"] for e in events if e["type"] == "GpusAllocated")
    assert len(placed) == 2 and "other-1" in placed, placed
    owners = net.gql("{ me { providerIds } }", PROVIDER_OWNER)["me"]["providerIds"]
    assert sorted(owners) == ["same-1", "same-2"]
    assert len(set(placed) & set(owners)) == 1, placed
