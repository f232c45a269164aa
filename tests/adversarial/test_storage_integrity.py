"""Storage integrity against the real network: what a client or a provider tries, refused.

Each test is one named attack against a running network (real Temporal, API, control
worker and agents), and checks two things: the attack is refused, and nothing changed
(no job event, no ledger movement, no reputation outcome, no byte in storage).

The grants a provider holds are read from the job's Temporal history, as a provider
(or anyone who read its plan) would hold them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from temporalio.client import Client

from domain.application import Network as DomainNetwork
from infra.payload_codec import decrypt_history
from infra.signing import Grant, grant_url, parse_grant
from protocol import digest
from tests.e2e.network import Network, network
from tests.support.graphql import SUBMIT
from workflows.contracts import job_workflow_id

pytestmark = pytest.mark.e2e

CLIENT, OTHER = "mallory", "victim"
PROVIDERS = ("adv-a", "adv-b")


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("adversarial-storage")
    with network(home, temporal_server, [
        ("adv-a", "1xH100:80", "1.0", []),
        ("adv-b", "1xH100:80", "2.0", []),
    ], extra_env={"GPGPU_CHECKPOINT_INTERVAL_S": "0.5"}) as n:
        # One job first: on a loaded machine the first job of a fresh network has lost its
        # first provider to the 6 s schedule-to-start limit (FAST_FAULTS), which would move
        # the runs below to attempt 2.
        finished(n, submit(n, {"command": "true"}))
        yield n


def submit(net: Network, spec: dict[str, Any], client: str = CLIENT) -> str:
    body = {"name": "adv", "max_price_per_gpu_hour": "3", "timeout": "2m", **spec}
    answer = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert answer["__typename"] == "JobSubmitted", answer
    return str(answer["job"]["id"])


def finished(net: Network, job_id: str, client: str = CLIENT) -> dict[str, Any]:
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client=client, timeout_s=120)
    assert job["state"] == "SUCCEEDED", job
    return job


def plan_of(net: Network, job_id: str, attempt: int = 1) -> dict[str, Any]:
    """The run's transfer plan (its grants), as the job's history holds it."""

    async def read() -> dict[str, Any]:
        temporal = await Client.connect(net.stack.settings.temporal_address)
        raw = await temporal.get_workflow_handle(job_workflow_id(job_id)).fetch_history()
        history = decrypt_history(raw, net.stack.settings.payload_keys,  # as the network reads it
                                  net.stack.settings.temporal_namespace)
        for event in history.events:
            payloads: list[Any] = []
            if event.HasField("activity_task_completed_event_attributes"):
                payloads += event.activity_task_completed_event_attributes.result.payloads
            if event.HasField("marker_recorded_event_attributes"):  # a local activity's result
                for details in event.marker_recorded_event_attributes.details.values():
                    payloads += details.payloads
            for payload in payloads:
                try:
                    doc = json.loads(payload.data)
                except ValueError:
                    continue
                if isinstance(doc, dict) and "outputs" in doc and doc.get("attempt") == attempt:
                    return doc
        raise AssertionError(f"no transfer plan of attempt {attempt} in job {job_id}'s history")

    return asyncio.run(read())


def wait_plan(net: Network, job_id: str, attempt: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        try:
            return plan_of(net, job_id, attempt)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@dataclass(frozen=True)
class Snapshot:
    events: list[str]
    balances: dict[str, int]
    outcomes: dict[str, list[str]]
    stored: dict[str, tuple[str, int, bytes]]


def snapshot(net: Network, job_id: str, client: str = CLIENT) -> Snapshot:
    """What an attack must not change: the job's events, the ledger, reputations, storage."""
    store = DomainNetwork(env=net.stack.settings.eventsourcing_env())
    events = [type(e).__qualname__.rpartition(".")[2]
              for e in store.events.get(store.job(job_id).id)]
    space = net.client_id(client)
    accounts = [f"client:{space}", f"escrow:{job_id}", "protocol:fees"] + [
        f"provider:{p}" for p in PROVIDERS
    ]
    r = net.http.get(f"/storage/{space}", params={"prefix": f"jobs/{job_id}/"},
                     headers=net.headers(client))
    r.raise_for_status()
    stored = {o["key"]: (o["digest"], o["size"], net.get(client, o["key"])) for o in r.json()}
    return Snapshot(
        events,
        {a: store.balance(a) for a in accounts},
        {p: list(store.provider(p).outcomes) for p in PROVIDERS},
        stored,
    )


def output_grant(plan: dict[str, Any], path: str = "result.txt") -> str:
    return str(next(o["url"] for o in plan["outputs"] if o["path"] == path))


def put(url: str, data: bytes, **headers: str) -> httpx.Response:
    return httpx.put(url, content=data, headers={"X-Digest": b3(data), **headers}, timeout=30)


def reused(url: str, key: str) -> str:
    """The same grant (signature and all) with another key in its path."""
    parts = urlsplit(url)
    client = parts.path.split("/")[2]
    return f"{parts.scheme}://{parts.netloc}/storage/{client}/{key}?{parts.query}"


# -- the attacks ----------------------------------------------------------------------------


def test_client_overwrites_the_sha256_sidecar_of_its_output(net: Network) -> None:
    """The old attack: write `.result.txt.sha256` beside the output so verification sees a
    mismatch, the honest provider is penalised and the client pays nothing."""
    job_id = submit(net, {"command": "sleep 3; echo honest > result.txt",
                          "outputs": ["result.txt"]})
    sidecar = f"jobs/{job_id}/runs/1/.result.txt.sha256"
    space = net.client_id(CLIENT)
    # During the run and after it: the client may not write under its jobs' key space.
    during = net.http.put(f"/storage/{space}/{sidecar}", content=b"0" * 64,
                          headers=net.headers(CLIENT))
    assert during.status_code == 403, during.text
    provider = finished(net, job_id)["providerId"]
    before = snapshot(net, job_id)
    after_run = net.http.put(f"/storage/{space}/{sidecar}", content=b"0" * 64,
                             headers=net.headers(CLIENT))
    assert after_run.status_code == 403
    assert snapshot(net, job_id) == before
    key = f"jobs/{job_id}/runs/1/result.txt"
    assert before.stored == {key: (b3(b"honest\n"), 7, b"honest\n")}
    assert before.outcomes[provider][-1] == "success"
    assert "JobSettled" in before.events and "VerificationFailed" not in before.events


def test_client_declares_the_sidecar_as_an_output(net: Network) -> None:
    """The job itself writes a false `.result.txt.sha256` and declares it an output: it is
    an ordinary object; result.txt's digest is what storage computed as it arrived."""
    fake = "0" * 64
    job_id = submit(net, {
        "command": f"echo honest > result.txt; printf {fake} > .result.txt.sha256",
        "outputs": ["result.txt", ".result.txt.sha256"],
    })
    provider = finished(net, job_id)["providerId"]
    snap = snapshot(net, job_id)
    runs = f"jobs/{job_id}/runs/1"
    assert snap.stored[f"{runs}/result.txt"] == (b3(b"honest\n"), 7, b"honest\n")
    assert snap.stored[f"{runs}/.result.txt.sha256"] == (b3(fake.encode()), 64, fake.encode())
    assert snap.outcomes[provider][-1] == "success"


def test_provider_replays_an_output_put_after_job_succeeded(net: Network) -> None:
    job_id = submit(net, {"command": "echo honest > result.txt", "outputs": ["result.txt"]})
    finished(net, job_id)
    before = snapshot(net, job_id)
    grant = output_grant(plan_of(net, job_id))
    replay = put(grant, b"forged\n")
    assert replay.status_code == 403, replay.text
    assert "has ended" in replay.text
    same_bytes = put(grant, b"honest\n")  # even the very bytes: the run is over
    assert same_bytes.status_code == 403
    assert snapshot(net, job_id) == before


def test_provider_puts_a_body_other_than_it_declared(net: Network) -> None:
    job_id = submit(net, {"command": "sleep 6; echo honest > result.txt",
                          "outputs": ["result.txt"]})
    grant = output_grant(wait_plan(net, job_id))
    net.wait_job(job_id, ("RUNNING",), client=CLIENT, timeout_s=60)
    lying = httpx.put(grant, content=b"forged\n", headers={"X-Digest": b3(b"other\n")})
    assert lying.status_code == 400, lying.text
    assert "the bytes received have digest" in lying.text
    # Nor does a hash of its own choosing get it in: a grant's PUT declares BLAKE3.
    as_sha256 = httpx.put(grant, content=b"forged\n",
                          headers={"X-Sha256": hashlib.sha256(b"forged\n").hexdigest()})
    assert as_sha256.status_code == 400 and "X-Digest" in as_sha256.text
    key = f"jobs/{job_id}/runs/1/result.txt"
    # Nothing was stored: the honest provider's upload is the output, and it is accepted.
    provider = finished(net, job_id)["providerId"]
    snap = snapshot(net, job_id)
    assert snap.stored == {key: (b3(b"honest\n"), 7, b"honest\n")}
    assert snap.outcomes[provider][-1] == "success"


def test_a_grant_signed_with_the_real_key_past_the_server_maximum(net: Network) -> None:
    """The key leaked (as it did when it was 0644): a grant until the year 3000, for a live
    run, into another client's storage too, is refused whatever its signature."""
    net.put(OTHER, "private/data.txt", b"victim's data")
    job_id = submit(net, {"command": "sleep 6; echo honest > result.txt",
                          "outputs": ["result.txt"]})
    plan = wait_plan(net, job_id)
    held = parse_qs(urlsplit(output_grant(plan)).query)
    provider = held["provider"][0]
    secret = (net.stack.settings.home / "signing.key").read_text().strip()
    year_3000 = 32503680000
    for space, key, method in (
        (net.client_id(CLIENT), f"jobs/{job_id}/runs/1/result.txt", "PUT"),
        (net.client_id(OTHER), "private/data.txt", "GET"),
        (net.client_id(OTHER), "private/data.txt", "PUT"),
    ):
        grant = Grant(method, space, key, year_3000, job_id, 1, provider, 1 << 20)
        url = grant_url(bytes.fromhex(secret), net.url, grant)
        answer = httpx.request(method, url, content=b"x" if method == "PUT" else None,
                               headers={"X-Digest": b3(b"x")})
        assert answer.status_code == 403, (method, key, answer.text)
        assert "maximum" in answer.text
    assert net.get(OTHER, "private/data.txt") == b"victim's data"
    finished(net, job_id)
    assert snapshot(net, job_id).stored[f"jobs/{job_id}/runs/1/result.txt"][2] == b"honest\n"


def test_a_url_signed_with_another_key_is_refused(net: Network) -> None:
    key_file = net.stack.settings.home / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    job_id = submit(net, {"command": "sleep 6; echo honest > result.txt",
                          "outputs": ["result.txt"]})
    plan = wait_plan(net, job_id)
    real = parse_grant("PUT", "x", "y", {k: v[0] for k, v in
                                         parse_qs(urlsplit(output_grant(plan)).query).items()})
    forged = Grant("PUT", net.client_id(CLIENT), f"jobs/{job_id}/runs/1/result.txt",
                   int(time.time()) + 60, job_id, 1, real.provider_id, 1 << 20, once=True)
    answer = put(grant_url(b"not the network's key", net.url, forged), b"forged\n")
    assert answer.status_code == 403 and "signature" in answer.text
    finished(net, job_id)
    assert snapshot(net, job_id).stored[f"jobs/{job_id}/runs/1/result.txt"][2] == b"honest\n"


def test_another_jobs_grant_reused_for_a_different_key(net: Network) -> None:
    """A run's grant names its key: moved onto another job's output, or into another client's
    space, its signature no longer holds."""
    net.put(OTHER, "private/data.txt", b"victim's data")
    victim = submit(net, {"command": "sleep 6; echo honest > result.txt",
                          "outputs": ["result.txt"]}, client=OTHER)
    attacker = submit(net, {"command": "sleep 6; echo mine > result.txt",
                            "outputs": ["result.txt"]})
    grant = output_grant(wait_plan(net, attacker))
    target = f"jobs/{victim}/runs/1/result.txt"
    onto_victim = put(reused(grant, target).replace(f"/storage/{net.client_id(CLIENT)}/",
                                                    f"/storage/{net.client_id(OTHER)}/"),
                      b"forged\n")
    assert onto_victim.status_code == 403 and "signature" in onto_victim.text
    onto_input = put(reused(grant, "private/data.txt").replace(
        f"/storage/{net.client_id(CLIENT)}/", f"/storage/{net.client_id(OTHER)}/"), b"forged\n")
    assert onto_input.status_code == 403
    finished(net, victim, client=OTHER)
    finished(net, attacker)
    assert snapshot(net, victim, client=OTHER).stored[target][2] == b"honest\n"
    assert net.get(OTHER, "private/data.txt") == b"victim's data"


def test_client_puts_and_deletes_in_its_jobs_output_space_after_success(net: Network) -> None:
    job_id = submit(net, {"command": "echo honest > result.txt", "outputs": ["result.txt"]})
    finished(net, job_id)
    before = snapshot(net, job_id)
    key = f"jobs/{job_id}/runs/1/result.txt"
    space = net.client_id(CLIENT)
    headers = {**net.headers(CLIENT), "X-Digest": b3(b"forged\n")}
    overwrite = net.http.put(f"/storage/{space}/{key}", content=b"forged\n", headers=headers)
    assert overwrite.status_code == 403, overwrite.text
    delete = net.http.delete(f"/storage/{space}/{key}", headers=net.headers(CLIENT))
    assert delete.status_code == 403, delete.text
    fresh = net.http.put(f"/storage/{space}/jobs/{job_id}/runs/2/result.txt", content=b"x",
                         headers=net.headers(CLIENT))
    assert fresh.status_code == 403
    assert snapshot(net, job_id) == before


def test_client_stores_an_object_named_jobs_to_block_every_later_run(net: Network) -> None:
    """On the filesystem store an object named `jobs` would stand where the network's `jobs/`
    folder must go, so that every later output of the client's jobs failed to upload (and the
    job ended unpaid): the bare name is the network's too."""
    space = net.client_id(CLIENT)
    blocked = net.http.put(f"/storage/{space}/jobs", content=b"x", headers=net.headers(CLIENT))
    assert blocked.status_code == 403 and "jobs" in blocked.text, blocked.text
    assert net.http.get(f"/storage/{space}/jobs", headers=net.headers(CLIENT)).status_code == 404
    job_id = submit(net, {"command": "echo honest > result.txt", "outputs": ["result.txt"]})
    assert finished(net, job_id)["state"] == "SUCCEEDED"


def test_a_checkpoint_manifest_planted_for_the_next_attempt(net: Network) -> None:
    """Checkpoints are per attempt, written only through that run's grants: neither the
    client nor the run's provider can name what a later attempt resumes from."""
    job_id = submit(net, {
        "command": 'echo 5 > "$GPGPU_CHECKPOINT_DIR/step.txt"; sleep 4; echo done > result.txt',
        "outputs": ["result.txt"],
    })
    plan = wait_plan(net, job_id)
    space = net.client_id(CLIENT)
    planted = json.dumps({"job_id": job_id, "attempt": 2, "files": []}).encode()
    for key in (f"jobs/{job_id}/checkpoint/2/manifest.json", f"jobs/{job_id}/checkpoint.json"):
        by_client = net.http.put(f"/storage/{space}/{key}", content=planted,
                                 headers=net.headers(CLIENT))
        assert by_client.status_code == 403, by_client.text
    own = plan["checkpoint"]["manifest_url"]
    assert f"/jobs/{job_id}/checkpoint/1/manifest.json?" in own
    moved = put(reused(own, f"jobs/{job_id}/checkpoint/2/manifest.json"), planted)
    assert moved.status_code == 403 and "signature" in moved.text
    finished(net, job_id)
    # Nothing planted ever landed; the run's own checkpoint went once the job succeeded.
    deadline = time.monotonic() + 15
    while any("checkpoint" in k for k in snapshot(net, job_id).stored) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert list(snapshot(net, job_id).stored) == [f"jobs/{job_id}/runs/1/result.txt"]
