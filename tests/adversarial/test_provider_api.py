"""Attacks on the provider API (api/assignments.py), against a real network: real Temporal,
API, control worker and an honest agent; the attackers speak HTTP by hand.

`mallory` owns the rogue provider `rogue-1` (the cheapest: every job here goes to it);
`eve` owns `eve-1`, too dear for any job here, and attacks mallory's work. Each test asserts
the refusal and that nothing changed: no job event, no ledger entry, no reputation change,
no assignment handed out or closed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.assignments import AssignmentBoard
from infra.row_cipher import RowCipher
from readmodel.schema import ViewDB
from tests.adversarial.rogue import Rogue, State, settled
from tests.e2e.network import Network, network
from tests.e2e.test_job_log import follow as follow_log
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e

PRICE_MICRO = 500_000  # the rogue's 0.5 credits per GPU-hour


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adversarial")


@pytest.fixture(scope="module")
def net(home: Path, temporal_server: str) -> Iterator[Network]:
    # The honest agent asks 2 credits, above every job's maximum here: it only watches.
    with network(home, temporal_server, [("adv-honest", "1xH100:80", "2.0", [])]) as n:
        yield n


@pytest.fixture(scope="module")
def mallory(net: Network) -> Iterator[Rogue]:
    rogue = Rogue(net, "mallory", "rogue-1", PRICE_MICRO)
    net.wait_providers_online(["rogue-1"])
    yield rogue
    rogue.close()


@pytest.fixture(scope="module")
def eve(net: Network) -> Iterator[Rogue]:
    rogue = Rogue(net, "eve", "eve-1", 50_000_000)
    yield rogue
    rogue.close()


@pytest.fixture
def state(home: Path) -> State:
    return State(home)


def submit(net: Network, client: str = "victim") -> str:
    spec = {"name": "adv", "max_price_per_gpu_hour": "1", "timeout": "1m", "command": "true",
            "outputs": []}
    result = net.gql(SUBMIT, client, s=spec)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    return str(result["job"]["id"])


def job_events(net: Network, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = net.gql(
        "query($id: ID!) { job(id: $id) { events { type data } } }", "victim",
        id=job_id)["job"]["events"]
    return events


def finish_honestly(mallory: Rogue, net: Network, execute: dict[str, Any], job_id: str) -> None:
    """Complete the run as an honest provider would, so the job ends and frees the rogue."""
    r = mallory.call("complete", execute["assignmentId"], {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 10, "gpu_ms": 10, "log_tail": ""}})
    assert r.status_code in (200, 409), r.text
    upload = mallory.take("upload_outputs")
    r = mallory.call("complete", upload["assignmentId"],
                     {"result": {"manifest": [], "missing": []}})
    assert r.status_code == 200, r.text
    assert net.wait_job(job_id, ("SUCCEEDED",), client="victim")["state"] == "SUCCEEDED"


def test_a_process_with_no_key_gets_no_assignment(net: Network, mallory: Rogue,
                                                  state: State) -> None:
    job_id = submit(net)
    before = settled(state)
    anonymous = mallory.http.get("/provider/v1/providers/rogue-1/assignments",
                                 params={"wait_s": 1}, headers={"Authorization": ""})
    forged = mallory.http.get("/provider/v1/providers/rogue-1/assignments",
                              params={"wait_s": 1}, headers={"Authorization": "Bearer gpk_x"})

    assert anonymous.status_code == 401 and forged.status_code == 401
    assert "assignments" not in anonymous.text
    execute = mallory.take("execute_job")  # still there for its provider: nothing handed out
    assert all(a[1] is None for a in before["assignments"] if a[0] == execute["assignmentId"])
    finish_honestly(mallory, net, execute, job_id)


def test_another_owners_key_cannot_take_a_providers_assignments(
    net: Network, mallory: Rogue, eve: Rogue, state: State
) -> None:
    job_id = submit(net)
    time.sleep(1.0)  # the execute assignment is waiting for rogue-1 now
    before = settled(state)

    refused = eve.poll("rogue-1", wait_s=1)
    own = eve.poll("eve-1", wait_s=1)

    assert refused.status_code == 403, refused.text
    assert own.status_code == 200 and own.json() == {"assignments": []}
    assert state.snapshot() == before
    execute = mallory.take("execute_job")
    finish_honestly(mallory, net, execute, job_id)


def test_another_owners_key_cannot_heartbeat_complete_or_fail_an_assignment(
    net: Network, mallory: Rogue, eve: Rogue, state: State
) -> None:
    job_id = submit(net)
    execute = mallory.take("execute_job")
    aid = execute["assignmentId"]
    assert mallory.call("heartbeat", aid, {"details": {}}).json() == {"cancel": False}
    before = settled(state, wait_s=0.2)
    lie = {"result": {"exit_code": 0, "timed_out": False, "wall_ms": 1, "gpu_ms": 1,
                      "log_tail": "eve was here"}}

    answers = [
        eve.call("complete", aid, lie, provider_id="rogue-1").status_code,
        eve.call("complete", aid, lie, provider_id="eve-1").status_code,
        eve.call("heartbeat", aid, {"details": {}}, provider_id="rogue-1").status_code,
        eve.call("heartbeat", aid, {"details": {}}, provider_id="eve-1").status_code,
        eve.call("fail", aid, {"message": "no"}, provider_id="rogue-1").status_code,
        eve.call("fail", aid, {"message": "no"}, provider_id="eve-1").status_code,
    ]

    assert answers == [403, 404, 403, 404, 403, 404]
    assert state.snapshot() == before
    assert state.assignment(aid)["finished_at"] is None
    finish_honestly(mallory, net, execute, job_id)
    events = job_events(net, job_id)
    finished = next(e for e in events if e["type"] == "ExecutionFinished")
    assert finished["data"]["log_tail"] == ""  # mallory's report, not eve's


def test_an_assignment_completed_twice_changes_nothing_the_second_time(
    net: Network, mallory: Rogue, state: State
) -> None:
    job_id = submit(net)
    execute = mallory.take("execute_job")
    aid = execute["assignmentId"]
    first = mallory.call("complete", aid, {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 5, "gpu_ms": 5, "log_tail": "first"}})
    assert first.status_code == 200, first.text
    upload = mallory.take("upload_outputs")
    before = settled(state, wait_s=0.3)

    second = mallory.call("complete", aid, {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 9, "gpu_ms": 9, "log_tail": "second"}})

    # Taken as the first report tried again: the first result goes to Temporal once more,
    # which no longer waits for it.
    assert second.status_code == 410, second.text
    # Again at once: paced, not passed to Temporal again (api/dispatch.py due_to_redeliver).
    third = mallory.call("complete", aid, {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 9, "gpu_ms": 9, "log_tail": "third"}})
    assert third.status_code == 429 and third.headers["retry-after"] == "1", third.text
    assert state.snapshot() == before
    r = mallory.call("complete", upload["assignmentId"],
                     {"result": {"manifest": [], "missing": []}})
    assert r.status_code == 200, r.text
    assert net.wait_job(job_id, ("SUCCEEDED",), client="victim")["state"] == "SUCCEEDED"
    events = job_events(net, job_id)
    finished = next(e for e in events if e["type"] == "ExecutionFinished")
    assert finished["data"]["log_tail"] == "first"


def test_a_result_whose_api_died_before_temporal_took_it_goes_when_reported_again(
    net: Network, mallory: Rogue, state: State
) -> None:
    """An API killed between keeping a report and handing it to Temporal leaves the row
    completed, with its result, and the step waiting: the agent's report tried again at
    another API delivers the result kept (not the one sent again), and the run is not
    lost."""
    job_id = submit(net)
    aid = mallory.take("execute_job")["assignmentId"]
    kept = {"exit_code": 0, "timed_out": False, "wall_ms": 5, "gpu_ms": 5, "log_tail": "kept"}
    db = ViewDB(net.stack.settings)
    try:  # what the dying API left
        assert AssignmentBoard(db, RowCipher(net.stack.settings.payload_keys)).finish(
            aid, "completed", kept)
    finally:
        db.close()

    again = mallory.call("complete", aid, {"result": {**kept, "log_tail": "sent again"}})

    assert again.status_code == 200, again.text
    upload = mallory.take("upload_outputs")
    r = mallory.call("complete", upload["assignmentId"],
                     {"result": {"manifest": [], "missing": []}})
    assert r.status_code == 200, r.text
    assert net.wait_job(job_id, ("SUCCEEDED",), client="victim")["state"] == "SUCCEEDED"
    events = job_events(net, job_id)
    assert [e["data"]["log_tail"] for e in events if e["type"] == "ExecutionFinished"] == [
        "kept"]
    assert "ProviderLost" not in {e["type"] for e in events}


def test_a_result_that_does_not_fit_its_request_is_refused(
    net: Network, mallory: Rogue, state: State
) -> None:
    job_id = submit(net)
    execute = mallory.take("execute_job")
    aid = execute["assignmentId"]
    before = settled(state, wait_s=0.2)
    bad = [
        {"exit_code": "0", "timed_out": False, "wall_ms": 1, "gpu_ms": 1, "log_tail": ""},
        {"exit_code": 0, "timed_out": False, "wall_ms": 1, "gpu_ms": 10**30, "log_tail": ""},
        {"exit_code": 0, "timed_out": False, "wall_ms": -1, "gpu_ms": 1, "log_tail": ""},
        {"exit_code": 0, "timed_out": False, "wall_ms": 1, "gpu_ms": 1, "log_tail": "",
         "paid_micro": 10**9},
        {"manifest": [], "missing": []},
    ]

    answers = [mallory.call("complete", aid, {"result": r}) for r in bad]

    assert [a.status_code for a in answers] == [400] * len(bad), [a.text for a in answers]
    assert "exit_code" in answers[0].text and "gpu_ms" in answers[1].text
    assert state.snapshot() == before
    finish_honestly(mallory, net, execute, job_id)


@pytest.mark.parametrize("kind", ["JobEnded", "AttemptSpent", "AssignmentNotPickedUp"])
def test_a_provider_cannot_fail_its_step_with_the_control_planes_own_error(
    net: Network, mallory: Rogue, state: State, kind: str
) -> None:
    """A provider's "JobEnded" would end a live job as if a reset had found it over (and,
    without its details, stall the workflow): the control plane's failure types are its own."""
    job_id = submit(net)
    execute = mallory.take("execute_job")
    aid = execute["assignmentId"]
    before = settled(state, wait_s=0.2)

    forged = mallory.call("fail", aid, {"message": "over", "type": kind, "nonRetryable": True})

    assert forged.status_code == 400 and kind in forged.text, forged.text
    assert state.snapshot() == before
    assert state.assignment(aid)["finished_at"] is None
    finish_honestly(mallory, net, execute, job_id)


def test_an_upload_naming_an_output_it_was_not_asked_for_is_refused(
    net: Network, mallory: Rogue, state: State
) -> None:
    job_id = submit(net)
    execute = mallory.take("execute_job")
    assert mallory.call("complete", execute["assignmentId"], {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 5, "gpu_ms": 5,
        "log_tail": ""}}).status_code == 200
    upload = mallory.take("upload_outputs")
    before = settled(state, wait_s=0.3)

    planted = mallory.call("complete", upload["assignmentId"], {"result": {
        "manifest": [{"path": "model.bin", "key": "jobs/other/model.bin",
                      "digest": "blake3:" + "0" * 64, "size": 1}], "missing": []}})

    assert planted.status_code == 400 and "model.bin" in planted.text
    assert state.snapshot() == before
    r = mallory.call("complete", upload["assignmentId"],
                     {"result": {"manifest": [], "missing": []}})
    assert r.status_code == 200, r.text
    assert net.wait_job(job_id, ("SUCCEEDED",), client="victim")["state"] == "SUCCEEDED"


def test_a_provider_claiming_600000_gpu_ms_for_a_1s_job_is_billed_about_1s(
    net: Network, mallory: Rogue, state: State
) -> None:
    job_id = submit(net)
    execute = mallory.take("execute_job")
    time.sleep(1.0)
    r = mallory.call("complete", execute["assignmentId"], {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 600_000, "gpu_ms": 600_000,
        "log_tail": ""}})
    assert r.status_code == 200, r.text
    upload = mallory.take("upload_outputs")
    assert mallory.call("complete", upload["assignmentId"],
                        {"result": {"manifest": [], "missing": []}}).status_code == 200

    job = net.wait_job(job_id, ("SUCCEEDED",), client="victim")
    events = job_events(net, job_id)
    billed_ms = next(e for e in events if e["type"] == "ExecutionFinished")["data"]["gpu_ms"]
    assert 1000 <= billed_ms < 3000, billed_ms  # what the API saw: handed out -> result
    one_second = PRICE_MICRO / 3600
    assert int(job["costMicro"]) < 3 * one_second, job  # not 600 s: 83,333 micro-credits
    paid = state.transfers(f"pay:{job_id}:rogue-1")
    assert paid and all(0 < a < 3 * one_second for a in paid), paid


def test_the_agent_process_has_no_temporal_address_or_credential(net: Network) -> None:
    agent = next(c for c in net.stack.children if c.name == "adv-honest")
    environ = Path(f"/proc/{agent.proc.pid}/environ").read_bytes().split(b"\0")
    names = {e.split(b"=", 1)[0].decode() for e in environ if e}
    temporal_port = net.stack.settings.temporal_address.rpartition(":")[2].encode()

    assert not {n for n in names if "TEMPORAL" in n}
    assert not [e for e in environ if temporal_port in e]
    cmdline = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes()
    assert temporal_port not in cmdline
    assert "GPGPU_API_KEY" in names  # what it holds: its owner's provider key


def test_a_jobs_live_log_takes_only_its_own_providers_output_within_bounds(
    net: Network, mallory: Rogue, eve: Rogue
) -> None:
    job_id = submit(net)
    execute = mallory.take("execute_job")
    aid = execute["assignmentId"]

    def beat(who: Rogue, log: dict[str, Any], provider_id: str | None = None) -> Any:
        return who.call("heartbeat", aid, {"details": {}, "log": log}, provider_id=provider_id)

    hello = {"offset": 0, "bytes": 6, "text": "hello\n"}
    assert beat(eve, {**hello, "text": "eve!!\n"}, "rogue-1").status_code == 403
    assert beat(eve, {**hello, "text": "eve!!\n"}, "eve-1").status_code == 404
    assert beat(mallory, hello).json() == {"cancel": False}
    assert beat(mallory, hello).json() == {"cancel": False}  # sent again: kept once
    huge = beat(mallory, {"offset": 6, "bytes": 16385, "text": "x" * 16385})
    assert huge.status_code == 413 and "at most 16384 bytes" in huge.text, huge.text
    overlap = beat(mallory, {"offset": 3, "bytes": 6, "text": "lo\nbye"})
    assert overlap.status_code == 400 and "log.offset: 3 overlaps" in overlap.text
    padded = beat(mallory, {"offset": 6, "bytes": 1, "text": "many chars"})
    assert padded.status_code == 400 and "log.text" in padded.text

    r = mallory.call("complete", aid, {"result": {
        "exit_code": 0, "timed_out": False, "wall_ms": 10, "gpu_ms": 10, "log_tail": ""}})
    assert r.status_code == 200, r.text
    late = beat(mallory, {"offset": 6, "bytes": 5, "text": "late\n"})
    assert late.json() == {"cancel": True}  # a finished run's output is not taken
    upload = mallory.take("upload_outputs")
    wrong_step = mallory.call("heartbeat", upload["assignmentId"],
                              {"details": {}, "log": {**hello, "text": "upld\n"}})
    assert wrong_step.status_code == 400 and "only a run has output" in wrong_step.text
    r = mallory.call("complete", upload["assignmentId"],
                     {"result": {"manifest": [], "missing": []}})
    assert r.status_code == 200, r.text
    assert net.wait_job(job_id, ("SUCCEEDED",), client="victim")["state"] == "SUCCEEDED"

    chunks, end = asyncio.run(follow_log(net, "victim", job_id))
    assert [c["text"] for c in chunks] == ["hello\n"] and '"complete"' in end
    stolen, refusal = asyncio.run(follow_log(net, "mallory", job_id))
    assert stolen == [] and "of yours" in refusal
