"""Attacks on grant renewal: a grant that leaked (from a provider's log, a client's view of
its job, a history) cannot be kept alive by whoever holds it, only by the provider it was
made for, with its own key, while its run is live.

Grants here live 30 s (GPGPU_GRANT_MAX_S, its least), less than the agent's renewal margin:
the honest agent renews every grant before it uses it, so the job succeeding shows the
provider's own renewals still work.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.adversarial.test_storage_integrity import SUBMIT, wait_plan
from tests.e2e.network import Network, network

CLIENT = "mallory"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("adversarial-renewal"), temporal_server,
                 [("renew-a", "1xH100:80", "1.0", [])],
                 extra_env={"GPGPU_GRANT_MAX_S": "30"}) as n:
        yield n


def renew(url: str, method: str, key: str | None) -> httpx.Response:
    headers = {"X-Grant-Method": method}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(url, headers=headers, timeout=30)


def test_only_the_grants_provider_renews_it_while_its_run_is_live(net: Network) -> None:
    net.put(CLIENT, "in.txt", b"renewal input\n")
    answer = net.gql(SUBMIT, CLIENT, s={
        "name": "renewal", "max_price_per_gpu_hour": "3", "timeout": "2m",
        "command": "sleep 12 && cp in.txt out.txt", "inputs": [{"key": "in.txt"}],
        "outputs": ["out.txt"],
    })["submitJob"]
    assert answer["__typename"] == "JobSubmitted", answer
    job_id = answer["job"]["id"]
    plan = wait_plan(net, job_id)
    output = next(o["url"] for o in plan["outputs"] if o["path"] == "out.txt")
    grant_input = plan["inputs"][0]["url"]
    net.sign_up("thief", ["provider"])  # a provider of its own owner, holding a copy
    thief = net.api_key("thief", ["provider"])

    refused = {
        "no key": renew(output, "PUT", None),
        "another owner's provider key": renew(output, "PUT", thief),
        "the job's own client": renew(grant_input, "GET", net.token(CLIENT)),
    }
    assert {who: r.status_code for who, r in refused.items()} == {
        "no key": 401, "another owner's provider key": 403, "the job's own client": 403,
    }, {who: r.text for who, r in refused.items()}
    assert "only provider 'renew-a'" in refused["another owner's provider key"].text

    # The provider's own key renews it, as its agent does.
    own = renew(output, "PUT", net.stack.env["GPGPU_API_KEY"])
    assert own.status_code == 200, own.text

    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), CLIENT, timeout_s=120)
    assert job["state"] == "SUCCEEDED", job  # the agent's own renewals (30 s grants) worked
    listed = net.http.get(f"/storage/{net.client_id(CLIENT)}", params={"prefix": f"jobs/{job_id}/"},
                          headers=net.headers(CLIENT)).json()
    (out,) = [o["key"] for o in listed if o["key"].endswith("/out.txt")]
    assert net.get(CLIENT, out) == b"renewal input\n"
    # The run ended: nobody renews its grants any more, not even the provider.
    after = renew(output, "PUT", net.stack.env["GPGPU_API_KEY"])
    assert after.status_code == 403, after.text
