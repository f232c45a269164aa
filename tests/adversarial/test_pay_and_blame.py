"""Who pays and who is blamed when a run goes wrong on purpose, against a real network: real
Temporal, API, control worker, honest agents, and a rogue provider speaking the provider
API by hand.

`fair-a` (the cheaper) and `fair-b` are honest A100 agents of two owners; `rogue-p`, an H100
of mallory's, is the cheapest of all, so every job that does not ask for an A100 goes to it
first. Each test checks what the attacker wanted did not happen and what the network did
instead: who was paid (the ledger), what outcome was recorded (the job's events).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol import digest
from tests.adversarial.rogue import Rogue, State
from tests.e2e.network import Network, network
from tests.support.graphql import SUSPEND

pytestmark = pytest.mark.e2e

SUBMIT = """mutation($s: JSON!) { submitJob(spec: $s) { __typename
  ... on JobSubmitted { job { id } } ... on SpecRejected { errors { field message } } } }"""
EVENTS = "query($id: ID!) { job(id: $id) { events { type data } } }"
MAX_OBJECT = 256 * 1024
ROGUE_PRICE_MICRO = 500_000
RETRY_WAIT_S = 15
CHECK_WAIT_S = 10


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
        "GPGPU_REPLICA_WAIT_S": str(RETRY_WAIT_S),
        # The network's check: of every empty-handed run, and drawn for reproducible jobs.
        "GPGPU_ADAPTIVE_CHECKS": "true", "GPGPU_CHECK_WAIT_S": str(CHECK_WAIT_S)},
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
    # The run was empty-handed: the network's check (fair-b, another owner) reproduced it.
    assert state.transfers(f"check:{job_id}:fair-b")
    assert outcomes(net, "stingy", job_id) == {"fair-a": "success", "fair-b": "success"}
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


@pytest.mark.parametrize("made_up", [False, True], ids=["nothing", "a-made-up-output"])
def test_a_provider_that_heartbeats_then_reports_a_timeout_is_not_paid(
    net: Network, rogue: Rogue, state: State, made_up: bool
) -> None:
    """mallory takes the job, heartbeats without running it, then reports a timeout with
    every output missing, or with one it made up uploaded through its grant, to be paid for
    a window it chose. Nothing checked the run and nothing shows work (a made-up file no
    more than none: a timed-out job fails whatever it left, so nothing compares it): the
    client pays (so it gains nothing from a job that never ends), mallory is not paid, and
    the run is recorded as a timeout."""
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
    manifest: list[dict[str, object]] = []
    if made_up:
        (out,) = upload["request"]["outputs"]
        body = b"done\n"
        r = httpx.put(out["url"], content=body, headers={"X-Digest": digest.of_bytes(body)})
        assert r.status_code == 200, r.text
        manifest = [{"path": out["path"], "key": out["key"], "digest": digest.of_bytes(body),
                     "size": len(body)}]
    r = rogue.call("complete", upload["assignmentId"], {"result": {
        "manifest": manifest, "missing": [] if made_up else ["out.txt"]}})
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
                      headers={"X-Digest": digest.of_bytes(planted)})
        assert r.status_code == 200, r.text
        manifest = json.dumps({"job_id": job_id, "attempt": 1, "files": [
            {"path": "n", "key": slot["key"], "digest": digest.of_bytes(planted),
             "size": len(planted)}]}).encode()
        r = httpx.put(plan["manifest_url"], content=manifest,
                      headers={"X-Digest": digest.of_bytes(manifest)})
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


def skip_the_work(rogue: Rogue) -> None:
    """The rogue takes the run, reports exit 0 at once and every output missing."""
    execute = rogue.take("execute_job")
    r = rogue.call("complete", execute["assignmentId"], {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 500, "gpu_ms": 500, "log_tail": ""}})
    assert r.status_code == 200, r.text
    upload = rogue.take("upload_outputs")
    paths = [o["path"] for o in upload["request"]["outputs"]]
    r = rogue.call("complete", upload["assignmentId"],
                   {"result": {"manifest": [], "missing": paths}})
    assert r.status_code == 200, r.text


def reputations(state: State) -> dict[str, tuple[Any, ...]]:
    """Every provider's reputation and outcome count, once the read model has caught up
    (two reads a second apart agree)."""
    last = None
    for _ in range(20):
        now = {row[0]: row[1:] for row in state.snapshot()["reputation"]}
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError(f"the providers' reputations kept changing: {last}")


@contextlib.contextmanager
def fresh_rogue(net: Network, owner: str, provider_id: str,
                model: str = "H100") -> Iterator[Rogue]:
    """A new rogue of its own owner, the cheapest provider with a new provider's standing.
    Once done, its GPU is suspended: the next test's jobs never wait for a rogue that stopped
    answering but is not yet seen offline."""
    r = Rogue(net, owner, provider_id, 100_000, model)
    try:
        net.wait_providers_online([provider_id])
        yield r
    finally:
        suspended = r.http.post("/graphql", json={"query": SUSPEND,
                                                  "variables": {"id": provider_id, "i": 0}})
        r.close()
    assert suspended.json()["data"]["suspendGpu"]["__typename"] == "Provider", suspended.text


# The jobs below run on A100s (the fair providers and a fresh rogue of that model), with at
# least a new provider's reputation (0.5): no rogue blamed before, still online or not, is
# placed.
TRUSTED = {"gpu_model": "A100", "min_reputation": 0.4}


def rogue_takes_a_job(net: Network, state: State, owner: str, provider_id: str, client: str,
                      act: Callable[[Rogue], None]) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """A job of `client` ("echo done > out.txt" on a trusted A100) that a fresh rogue takes
    and `act`s on instead of running it: the job as it ended, and the rogue's reputation
    (score, outcomes) from before."""
    with fresh_rogue(net, owner, provider_id, "A100") as liar:
        before = reputations(state)[provider_id]
        job_id = submit(net, client, command="echo done > out.txt", outputs=["out.txt"],
                        resources=TRUSTED)
        act(liar)
        return ended(net, client, job_id), before


def test_a_provider_that_reports_exit_0_and_every_output_missing_is_checked_and_not_paid(
    net: Network, state: State
) -> None:
    """oscar's provider skips the work and reports "exit 0, every output missing", hoping to
    be paid its window with a `success`. An empty-handed run is always checked by an
    independent run: fair-a delivers, the tie-break (fair-b) sides with it, oscar's run is
    outvoted and not paid; the client gets fair-a's result and pays for that run only.
    oscar is not blamed: an honest provider whose upload the client's storage refused
    reports the same (tests/adversarial/test_framing.py). It is recorded `outvoted`: its
    score unchanged, its next results all checked."""
    job, before = rogue_takes_a_job(net, state, "oscar", "rogue-r", "skipped", skip_the_work)

    assert_outvoted_and_the_check_kept(net, state, "skipped", job, "rogue-r", before)


def assert_outvoted_and_the_check_kept(net: Network, state: State, client: str,
                                       job: dict[str, Any], rogue: str,
                                       before: tuple[Any, ...]) -> None:
    """The rogue's run outvoted: not paid, not charged, recorded `outvoted` with its score
    unchanged; the job keeps fair-a's output, which the client pays for (its cost is that
    run and its fee); the network pays fair-b's tie-break."""
    job_id = job["id"]
    assert job["state"] == "SUCCEEDED" and job["providerId"] == "fair-a", job
    got = net.gql("query($id: ID!) { job(id: $id) { outputs { key } } }", client,
                  id=job_id)["job"]["outputs"]
    assert net.get(client, got[0]["key"]) == b"done\n"
    assert state.transfers(f"pay:{job_id}:{rogue}") == []
    assert state.transfers(f"withheld:{job_id}:{rogue}") == []
    paid, fee = state.transfers(f"pay:{job_id}:fair-a"), state.transfers(f"fee:{job_id}:fair-a")
    assert paid and int(job["costMicro"]) == paid[0] + sum(fee), (paid, fee, job)
    assert state.transfers(f"check:{job_id}:fair-b")  # the network pays its tie-break
    assert outcomes(net, client, job_id) == {
        rogue: "outvoted", "fair-a": "success", "fair-b": "success"}
    score, recorded = reputations(state)[rogue]
    assert score == before[0] and json.loads(recorded) == [*json.loads(before[1]), "outvoted"]


def fail_without_running(rogue: Rogue) -> None:
    """The rogue takes the run and reports at once that the command failed, every output
    missing, as an honest agent would for a job that crashed before writing anything."""
    execute = rogue.take("execute_job")
    r = rogue.call("complete", execute["assignmentId"], {"result": {
        "exit_code": 1, "timed_out": False, "wall_ms": 500, "gpu_ms": 500,
        "log_tail": "RuntimeError: CUDA error: out of memory"}})
    assert r.status_code == 200, r.text
    upload = rogue.take("upload_outputs")
    paths = [o["path"] for o in upload["request"]["outputs"]]
    r = rogue.call("complete", upload["assignmentId"],
                   {"result": {"manifest": [], "missing": paths}})
    assert r.status_code == 200, r.text


def test_a_provider_that_reports_a_failure_without_running_is_checked_and_not_paid(
    net: Network, state: State
) -> None:
    """peggy's provider reports that the command failed (exit 1) instead of running it,
    hoping to be paid its window with a `success` while the client's job fails. A failed
    run is always checked by an independent run: fair-a delivers, the tie-break (fair-b)
    sides with it, peggy's run is outvoted, neither paid nor charged; the job keeps fair-a's
    result and the client pays for that run only. peggy is recorded `outvoted` (not blamed:
    a client's job may fail on the run it targets only), its score unchanged."""
    job, before = rogue_takes_a_job(net, state, "peggy", "rogue-f", "crashed",
                                    fail_without_running)

    finished = [(e["data"]["provider_id"], e["data"]["exit_code"])
                for e in events(net, "crashed", job["id"]) if e["type"] == "ExecutionFinished"]
    assert finished == [("rogue-f", 1), ("fair-a", 0), ("fair-b", 0)], finished
    assert_outvoted_and_the_check_kept(net, state, "crashed", job, "rogue-f", before)


def test_an_empty_handed_run_no_one_can_check_is_not_paid_and_changes_no_reputation(
    net: Network, state: State
) -> None:
    """The same lie on a job only oscar's L4 fits: no independent run within the check's
    bound. Nothing shows the work was done, nor that it was not: the provider is not paid,
    the client is charged all the same (a job that writes nothing gets no free GPU time:
    its log is a result too), and no reputation changes."""
    with fresh_rogue(net, "oscar-2", "rogue-l4", "L4") as liar:
        before = reputations(state)
        job_id = submit(net, "unchecked", command="echo done > out.txt", outputs=["out.txt"],
                        resources={"gpu_model": "L4"})
        skip_the_work(liar)

        job = ended(net, "unchecked", job_id)

    assert job["state"] == "FAILED" and "declared outputs missing" in job["reason"], job
    skipped = [e["data"]["reason"] for e in events(net, "unchecked", job_id)
               if e["type"] == "CheckSkipped"]
    assert skipped == [f"the network's check found no independent provider within "
                       f"{CHECK_WAIT_S} s"], skipped
    assert state.transfers(f"pay:{job_id}:rogue-l4") == []
    withheld = state.transfers(f"withheld:{job_id}:rogue-l4")
    assert withheld and int(job["costMicro"]) == withheld[0], (withheld, job)
    assert outcomes(net, "unchecked", job_id) == {}
    assert reputations(state) == before


def test_an_honest_provider_whose_job_writes_no_output_is_paid_and_not_blamed(
    net: Network, state: State
) -> None:
    """The client's job exits 0 and writes nothing, hoping the network blames the provider
    (or pays no one). The network's check on another owner (fair-b) reproduces it: fair-a
    was honest, it is paid by the client and recorded a success; the job fails, the
    client's."""
    job_id = submit(net, "framer", command="true", outputs=["out.txt"], resources=TRUSTED)

    job = ended(net, "framer", job_id)

    assert job["state"] == "FAILED" and "declared outputs missing: out.txt" in job["reason"]
    assert state.transfers(f"pay:{job_id}:fair-a")
    assert state.transfers(f"withheld:{job_id}:fair-a") == []
    assert state.transfers(f"check:{job_id}:fair-b")
    assert int(job["costMicro"]) > 0, job
    assert outcomes(net, "framer", job_id) == {"fair-a": "success", "fair-b": "success"}


def test_an_honest_provider_whose_job_fails_is_paid_and_not_blamed(
    net: Network, state: State
) -> None:
    """The client's job fails (exit 3), as a job may: fair-a ran it honestly. The network's
    check on another owner (fair-b) fails too: fair-a is paid by the client and recorded a
    success; the job fails with its ending, the client's."""
    job_id = submit(net, "failer", command="echo no; exit 3", outputs=["out.txt"],
                    resources=TRUSTED)

    job = ended(net, "failer", job_id)

    assert (job["state"], job["providerId"]) == ("FAILED", "fair-a"), job
    assert job["reason"].startswith("the command exited with code 3"), job
    paid, fee = state.transfers(f"pay:{job_id}:fair-a"), state.transfers(f"fee:{job_id}:fair-a")
    assert paid and int(job["costMicro"]) == paid[0] + sum(fee), (paid, fee, job)
    assert state.transfers(f"withheld:{job_id}:fair-a") == []
    assert state.transfers(f"check:{job_id}:fair-b")
    assert outcomes(net, "failer", job_id) == {"fair-a": "success", "fair-b": "success"}


def test_a_nondeterministic_job_declared_reproducible_blames_no_one_and_the_client_pays(
    net: Network, state: State
) -> None:
    """A client declares a job reproducible that is not, to get honest providers' runs
    compared and one marked a mismatch. A fresh provider (driven by hand) plays an honest
    one here: it uploads the random bytes a run would. The network's check (fair-a) and
    the tie-break (fair-b) each give other bytes: no majority, so the job, not a provider,
    is what is wrong: no reputation changes, the client pays for its run, and the job
    fails saying it is not reproducible."""
    with fresh_rogue(net, "honest-hand", "hand-run", "A100") as rogue:
        before = reputations(state)
        job_id = run_by_hand(net, rogue)
        job = ended(net, "declarer", job_id)

    assert job["state"] == "FAILED" and "not reproducible as declared" in job["reason"], job
    allocated = [e["data"]["provider_id"] for e in events(net, "declarer", job_id)
                 if e["type"] == "GpusAllocated"]
    assert allocated == ["hand-run", "fair-a", "fair-b"], allocated
    assert outcomes(net, "declarer", job_id) == {}
    assert reputations(state) == before
    paid = state.transfers(f"pay:{job_id}:hand-run")  # by the client, who is charged
    assert paid and int(job["costMicro"]) >= paid[0] > 0, (paid, job)
    assert state.transfers(f"check:{job_id}:fair-a") and state.transfers(
        f"check:{job_id}:fair-b")


def run_by_hand(net: Network, rogue: Rogue) -> str:
    """A nondeterministic job declared reproducible, whose first run `rogue` makes as an
    honest agent would: exit 0, its own bytes uploaded through its grant."""
    job_id = submit(net, "declarer", command="head -c 16 /dev/urandom | od -x > out.txt",
                    outputs=["out.txt"], verification={"reproducible": True},
                    resources=TRUSTED)
    execute = rogue.take("execute_job")
    r = rogue.call("complete", execute["assignmentId"], {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 500, "gpu_ms": 500, "log_tail": ""}})
    assert r.status_code == 200, r.text
    upload = rogue.take("upload_outputs")
    (out,) = upload["request"]["outputs"]
    body = b"a run of its own\n"
    body_digest = digest.of_bytes(body)
    r = httpx.put(out["url"], content=body, headers={"X-Digest": body_digest})
    assert r.status_code == 200, r.text
    r = rogue.call("complete", upload["assignmentId"], {"result": {"manifest": [
        {"path": out["path"], "key": out["key"], "digest": body_digest, "size": len(body)}],
        "missing": []}})
    assert r.status_code == 200, r.text
    return job_id
