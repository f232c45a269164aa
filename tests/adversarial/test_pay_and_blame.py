"""Who pays and who is blamed when a run goes wrong on purpose, against a real network: real
Temporal, API, control worker, honest agents, and a rogue provider speaking the provider
API by hand.

`fair-a` (the cheaper) and `fair-b` are honest A100 agents of two owners; `rogue-p`, an H100
of mallory's, is the cheapest of all, so every job that does not ask for an A100 goes to it
first. Each test checks what the attacker wanted did not happen and what the network did
instead: who was paid (the ledger), what outcome was recorded (the job's events).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adversarial.rogue import Rogue, State
from tests.e2e.network import Network, network

pytestmark = pytest.mark.e2e

SUBMIT = """mutation($s: JSON!) { submitJob(spec: $s) { __typename
  ... on JobSubmitted { job { id } } ... on SpecRejected { errors { field message } } } }"""
EVENTS = "query($id: ID!) { job(id: $id) { events { type data } } }"
MAX_OBJECT = 256 * 1024
ROGUE_PRICE_MICRO = 500_000
RETRY_WAIT_S = 15


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pay-and-blame")


@pytest.fixture(scope="module")
def net(home: Path, temporal_server: str) -> Iterator[Network]:
    with network(home, temporal_server, [
        ("fair-a", "1xA100:40", "1.0", []),
        ("fair-b", "1xA100:40", "1.5", []),
    ], {"GPGPU_MAX_OBJECT_BYTES": str(MAX_OBJECT), "GPGPU_CHECKPOINT_INTERVAL_S": "0.5",
        # A run a provider failed waits this long for another (then the job fails).
        "GPGPU_REPLICA_WAIT_S": str(RETRY_WAIT_S)},
            owners={"fair-b": "other-owner"}) as n:
        yield n


@pytest.fixture(scope="module")
def rogue(net: Network) -> Iterator[Rogue]:
    r = Rogue(net, "mallory", "rogue-p", ROGUE_PRICE_MICRO)
    net.wait_providers_online(["rogue-p"])
    yield r
    r.close()


@pytest.fixture
def state(home: Path) -> State:
    return State(home)


def submit(net: Network, client: str, **spec: Any) -> str:
    body = {"name": "adv", "max_price_per_gpu_hour": "3", "timeout": "1m", **spec}
    answer = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert answer["__typename"] == "JobSubmitted", answer
    return str(answer["job"]["id"])


def events(net: Network, client: str, job_id: str) -> list[dict[str, Any]]:
    return list(net.gql(EVENTS, client, id=job_id)["job"]["events"])


def outcomes(net: Network, client: str, job_id: str) -> dict[str, str]:
    """provider -> the reputation outcome this job recorded for it."""
    return {e["data"]["provider_id"]: e["data"]["outcome"]
            for e in events(net, client, job_id) if e["type"] == "ReputationRecorded"}


def ended(net: Network, client: str, job_id: str) -> dict[str, Any]:
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED", "CANCELLED"), client, timeout_s=120)
    # The job's last steps (reputation, release) are projected just after its end.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            e["type"] == "ReputationRecorded" for e in events(net, client, job_id)):
        time.sleep(0.2)
    return job


def test_a_client_whose_output_the_store_refuses_still_pays_for_the_run(
    net: Network, state: State
) -> None:
    """A job that writes an output past the per-object maximum makes its upload answer 413:
    the client hoped the network would take that as the provider refusing the job, and pay
    no one. The output counts as missing: the run is judged, and paid, like any run with
    missing outputs, and the client is told why."""
    job_id = submit(net, "stingy", command=f"head -c {MAX_OBJECT + 1} /dev/zero > out.bin",
                    outputs=["out.bin"], resources={"gpu_model": "A100"})

    job = ended(net, "stingy", job_id)

    assert job["state"] == "FAILED", job
    assert "declared outputs missing: out.bin" in job["reason"], job
    assert "the most one object may hold" in job["reason"], job
    assert int(job["costMicro"]) > 0, job
    paid = state.transfers(f"pay:{job_id}:fair-a")
    assert paid and paid[0] > 0, paid
    assert outcomes(net, "stingy", job_id) == {"fair-a": "success"}
    stored = net.http.get(f"/storage/{net.client_id('stingy')}", headers=net.headers("stingy"))
    assert [o["key"] for o in stored.json()] == []


def test_a_provider_that_fails_its_stage_step_is_blamed_and_the_job_goes_elsewhere(
    net: Network, rogue: Rogue, state: State
) -> None:
    """mallory takes the job, fails its stage step with an error of its own ("disk full"),
    and hoped the job would end FAILED with no outcome recorded against it. The run goes to
    another provider; once that one got through, the failure is mallory's."""
    net.put("refused", "inputs/in.txt", b"some input\n")
    job_id = submit(net, "refused", command="cat in.txt > out.txt", outputs=["out.txt"],
                    inputs=[{"key": "inputs/in.txt", "name": "in.txt"}])
    stage = rogue.take("stage_inputs")
    r = rogue.call("fail", stage["assignmentId"],
                   {"message": "disk full", "type": "ProviderError", "nonRetryable": True})
    assert r.status_code == 200, r.text

    job = ended(net, "refused", job_id)

    assert job["state"] == "SUCCEEDED" and job["providerId"] == "fair-a", job
    failed = [e["data"] for e in events(net, "refused", job_id) if e["type"] == "RunFailed"]
    assert [(f["attempt"], f["provider_id"]) for f in failed] == [(1, "rogue-p")], failed
    assert "disk full" in failed[0]["reason"], failed
    assert outcomes(net, "refused", job_id) == {"rogue-p": "failure", "fair-a": "success"}
    assert state.transfers(f"pay:{job_id}:rogue-p") == []
    assert state.transfers(f"pay:{job_id}:fair-a")
    got = net.gql("query($id: ID!) { job(id: $id) { outputs { key } } }", "refused",
                  id=job_id)["job"]["outputs"]
    assert net.get("refused", got[0]["key"]) == b"some input\n"


def test_a_job_no_provider_can_run_fails_refunded_and_blames_no_provider(
    net: Network, state: State
) -> None:
    """The client changes its input after submitting: every provider refuses it (the grant
    names the bytes pinned at submission). Each failure re-places the run; none got
    through, so no provider is blamed, and the job fails refunded, saying why."""
    net.put("changer", "inputs/in.txt", b"as submitted\n")
    job_id = submit(net, "changer", command="cat in.txt > out.txt", outputs=["out.txt"],
                    inputs=[{"key": "inputs/in.txt", "name": "in.txt"}],
                    resources={"gpu_model": "A100"})
    net.put("changer", "inputs/in.txt", b"changed after submission\n")

    job = ended(net, "changer", job_id)

    assert job["state"] == "FAILED" and int(job["costMicro"]) == 0, job
    assert "in.txt" in job["reason"] and "once a provider failed it" in job["reason"], job
    seen = events(net, "changer", job_id)
    assert {e["data"]["provider_id"] for e in seen if e["type"] == "RunFailed"} == {
        "fair-a", "fair-b"}
    assert outcomes(net, "changer", job_id) == {}
    assert not state.transfers(f"pay:{job_id}:fair-a") + state.transfers(f"pay:{job_id}:fair-b")


def test_a_provider_that_heartbeats_then_reports_a_timeout_with_no_outputs_is_not_paid(
    net: Network, rogue: Rogue, state: State
) -> None:
    """mallory takes the job, heartbeats without running it, then reports a timeout with
    every output missing, to be paid for a window it chose. Nothing checked the run and
    nothing shows work: the client pays (so it gains nothing from a job that never ends),
    mallory is not paid, and the run is recorded as a timeout."""
    # Priced so that only mallory fits (its failure above made the others more attractive).
    job_id = submit(net, "timed", command="sleep 1; echo done > out.txt", outputs=["out.txt"],
                    max_price_per_gpu_hour="0.9")
    execute = rogue.take("execute_job")
    aid = execute["assignmentId"]
    for _ in range(3):
        assert rogue.call("heartbeat", aid, {"details": {}}).json() == {"cancel": False}
        time.sleep(1.0)
    r = rogue.call("complete", aid, {"result": {
        "exit_code": None, "timed_out": True, "wall_ms": 60_000, "gpu_ms": 60_000,
        "log_tail": "killed at the timeout"}})
    assert r.status_code == 200, r.text
    upload = rogue.take("upload_outputs")
    r = rogue.call("complete", upload["assignmentId"],
                   {"result": {"manifest": [], "missing": ["out.txt"]}})
    assert r.status_code == 200, r.text

    job = ended(net, "timed", job_id)

    assert job["state"] == "FAILED" and "timed out" in job["reason"], job
    assert state.transfers(f"pay:{job_id}:rogue-p") == []
    withheld = state.transfers(f"withheld:{job_id}:rogue-p")
    one_second = ROGUE_PRICE_MICRO / 3600
    assert withheld and 2 * one_second < withheld[0] < 10 * one_second, withheld  # the window
    assert int(job["costMicro"]) == withheld[0], job
    assert outcomes(net, "timed", job_id) == {"rogue-p": "timeout"}


def test_a_lost_providers_checkpoint_does_not_decide_another_owners_run(
    net: Network, state: State
) -> None:
    """trudy's provider takes a job that checkpoints, uploads through its own grants a
    checkpoint saying the work is done, and stops answering. The next provider (another
    owner's) would resume from it, and its result, judged as its own, would be trudy's
    plant. It runs from scratch: only a checkpoint of the same owner's providers is resumed
    (tests/e2e/test_checkpoint_resume.py has one resumed)."""
    trudy = Rogue(net, "trudy", "rogue-q", 100_000)  # fresh: the most attractive provider
    try:
        net.wait_providers_online(["rogue-q"])
        job_id = submit(net, "resumer", outputs=["out.txt"], command=(
            'echo "from $(cat "$GPGPU_CHECKPOINT_DIR/n" 2>/dev/null || echo 0)" > out.txt'))
        execute = trudy.take("execute_job")
        plan = execute["request"]["checkpoint"]
        planted = b"999\n"
        slot = plan["slots"][0]
        r = httpx.put(slot["url"], content=planted,
                      headers={"X-Sha256": hashlib.sha256(planted).hexdigest()})
        assert r.status_code == 200, r.text
        manifest = json.dumps({"job_id": job_id, "attempt": 1, "files": [
            {"path": "n", "key": slot["key"], "sha256": hashlib.sha256(planted).hexdigest(),
             "size": len(planted)}]}).encode()
        r = httpx.put(plan["manifest_url"], content=manifest,
                      headers={"X-Sha256": hashlib.sha256(manifest).hexdigest()})
        assert r.status_code == 200, r.text
        # ... and no heartbeat: the step times out, rogue-q is lost.

        job = ended(net, "resumer", job_id)
    finally:
        trudy.close()

    assert job["state"] == "SUCCEEDED" and job["providerId"] == "fair-a", job
    got = net.gql("query($id: ID!) { job(id: $id) { outputs { key } } }", "resumer",
                  id=job_id)["job"]["outputs"]
    assert net.get("resumer", got[0]["key"]) == b"from 0\n"  # not trudy's "999"
    seen = events(net, "resumer", job_id)
    lost = [e["data"]["provider_id"] for e in seen if e["type"] == "ProviderLost"]
    assert lost == ["rogue-q"], seen
    finished = next(e["data"] for e in seen if e["type"] == "ExecutionFinished")
    assert "started from the checkpoint" not in finished["log_tail"], finished
    assert outcomes(net, "resumer", job_id) == {"fair-a": "success"}
    assert state.transfers(f"pay:{job_id}:rogue-q") == []
