"""A client that frames an honest provider, against a real network: real Temporal, API,
control worker and three honest agents of three owners (`fair-a`, the cheapest, takes each
job's first run; `fair-b` and `fair-c` the network's check and its tie-break).

The client owns the job's command and its storage space, so it can make the network's
check disagree with an honest run on purpose: a command that writes one answer on the run
it targets and another on the check (it can read the clock), or a storage quota full for
one run's upload and free for the other's. Each test mounts one such attack and checks that
the attack was really mounted (three runs) and that it failed: no `mismatch` recorded
against the honest provider, its reputation score as it was. Outvoted by a command that
answers differently, it is recorded `outvoted`, which puts it back on probation (its next
results are all checked by the network: domain/verification.py `check_rate`) and counts in
the score only once the jobs of OUTVOTED_CLIENTS distinct clients outvoted it within a
window (domain/reputation.py). A run whose upload the client's quota refused is not
outvoted at all: the storage API recorded the refusal, and such a run does not vote
(activities/verify.py). Every attack here is one client's, `framer`, however often it is
mounted: one client alone can never lower a score; but for one test's, mounted from
OUTVOTED_CLIENTS fresh accounts, which count as no clients since none of them paid for
verified work (OUTVOTED_MIN_SPENT_MICRO).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.reputation import OUTVOTED_CLIENTS
from tests.adversarial.rogue import State
from tests.adversarial.test_pay_and_blame import ended, events, outcomes, reputations, submit
from tests.e2e.network import Network, network

pytestmark = pytest.mark.e2e

QUOTA = 64 * 1024  # each client's storage quota on this network
WAIT_S = 20  # how long the network's check, and its tie-break, wait for a provider
HONEST = "fair-a"
FRAMER = "framer"  # the one client of every attack in this module


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("framing")


@pytest.fixture(scope="module")
def net(home: Path, temporal_server: str) -> Iterator[Network]:
    # fair-a is cheap enough to take every job's first run however many successes fair-b
    # (1.5) earns as the network's check (domain/matching.py weighs price and reputation).
    # Each has a GPU for each of the OUTVOTED_CLIENTS attacks mounted at once.
    gpus = f"{OUTVOTED_CLIENTS}xA100:40"
    with network(home, temporal_server, [
        ("fair-a", gpus, "0.5", []),
        ("fair-b", gpus, "1.5", []),
        ("fair-c", gpus, "2.0", []),
    ], {"GPGPU_STORAGE_QUOTA_BYTES": str(QUOTA),
        # The network's check: of every empty-handed run, and of every run of a provider on
        # probation (all three are new) of a job declared reproducible.
        "GPGPU_ADAPTIVE_CHECKS": "true", "GPGPU_CHECK_WAIT_S": str(WAIT_S),
        "GPGPU_REPLICA_WAIT_S": str(WAIT_S)},
            owners={"fair-b": "owner-b", "fair-c": "owner-c"}) as n:
        yield n


@pytest.fixture
def state(home: Path) -> State:
    return State(home)


def stored_bytes(net: Network, client: str) -> int:
    """What the client's space holds (its uploads and its jobs' outputs), in bytes."""
    r = net.http.get(f"/storage/{net.client_id(client)}", headers=net.headers(client))
    r.raise_for_status()
    return sum(int(o["size"]) for o in r.json())


def allocated(net: Network, client: str, job_id: str) -> list[str]:
    return [e["data"]["provider_id"] for e in events(net, client, job_id)
            if e["type"] == "GpusAllocated"]


def assert_outvoted_only(state: State, before: tuple[Any, ...], times: int = 1) -> None:
    """`times` `outvoted` more on the honest provider's record, and its reputation score
    (the read model's, as anyone recomputes it) exactly as it was."""
    score, recorded = after = reputations(state)[HONEST]
    assert json.loads(recorded) == [*json.loads(before[1]), *["outvoted"] * times], (
        after, before)
    assert score == before[0], (after, before)


def assert_not_framed(net: Network, state: State, client: str, job_id: str) -> None:
    """The attack was mounted (the honest run, the check, the tie-break) and failed."""
    assert allocated(net, client, job_id) == ["fair-a", "fair-b", "fair-c"]
    recorded = outcomes(net, client, job_id)
    assert recorded[HONEST] == "outvoted", recorded
    assert "mismatch" not in recorded.values(), recorded
    # Outvoted: not paid, and the client is not charged for it either.
    job = f"{job_id}:{HONEST}"
    assert state.transfers(f"pay:{job}") == [] and state.transfers(f"withheld:{job}") == []


def frame_by_the_clock(net: Network, state: State, clients: list[str]) -> list[str]:
    """The attack of the tests below, mounted once from each client, all at once (fair-a
    has a GPU for each), and its failure checked."""
    before = reputations(state)[HONEST]
    switch = int(time.time()) + 12
    job_ids = [submit(
        net, client, outputs=["out.txt"], verification={"reproducible": True},
        resources={"gpu_model": "A100"},
        # The first run writes before the switch and ends after it, so the check and the
        # tie-break, which follow it, start after it (and end at once).
        command=f'if [ "$(date +%s)" -lt {switch} ]; then echo here; else echo elsewhere; fi'
                f' > out.txt; while [ "$(date +%s)" -le {switch} ]; do sleep 0.2; done')
        for client in clients]

    for client, job_id in zip(clients, job_ids, strict=True):
        job = ended(net, client, job_id)
        assert job["state"] == "SUCCEEDED" and job["providerId"] == "fair-b", job
        got = net.gql("query($id: ID!) { job(id: $id) { outputs { key } } }", client,
                      id=job_id)["job"]["outputs"]
        assert net.get(client, got[0]["key"]) == b"elsewhere\n"
        stored = net.get(client, f"jobs/{job_id}/runs/1/out.txt")
        assert stored == b"here\n"  # fair-a ran it honestly, on its side of the switch
        assert_not_framed(net, state, client, job_id)
        assert int(job["costMicro"]) > 0, job  # the client pays for the result it keeps
    assert_outvoted_only(state, before, times=len(clients))
    return job_ids


def test_a_job_that_writes_another_answer_on_the_run_it_targets_frames_no_one(
    net: Network, state: State
) -> None:
    """A job declared reproducible writes what depends on where and when it runs: here the
    clock (the sandbox hides the host's name and paths, not the time), "here" on the first
    run and "elsewhere" on the network's check and its tie-break, which follow it. Two
    runs of two other owners against one: fair-a is outvoted. The client wanted it blamed
    (a `mismatch`, its reputation down); it is not paid, but not blamed: a majority of a
    client's command is no evidence against a provider (`outvoted`: its score unchanged,
    its next results checked)."""
    frame_by_the_clock(net, state, [FRAMER])


def test_one_client_that_frames_a_provider_again_and_again_lowers_no_score(
    net: Network, state: State
) -> None:
    """The same attack, mounted by one client as many times as distinct clients would
    lower the score (OUTVOTED_CLIENTS): each is recorded `outvoted` and none counts, since
    the evidence of one client's jobs, however many, is its command's to shape
    (domain/reputation.py `counted_outvoted`). The score is as it was before the first."""
    frame_by_the_clock(net, state, [FRAMER] * OUTVOTED_CLIENTS)


def recorded_outcomes(state: State, provider_id: str) -> list[dict[str, Any]]:
    """The provider's ReputationRecorded events, as the read model holds them."""
    with sqlite3.connect(state.path, timeout=30) as db:
        rows = db.execute("SELECT data FROM provider_events WHERE provider_id = ? AND"
                          " type = 'ReputationRecorded' ORDER BY seq", (provider_id,))
        return [json.loads(data) for (data,) in rows.fetchall()]


def test_fresh_accounts_that_were_only_granted_credits_frame_no_one(
    net: Network, state: State
) -> None:
    """Accounts are cheap: one person opens OUTVOTED_CLIENTS new accounts, each granted
    credits (as every account of this network is, through the ledger) and none having paid
    for any verified work, and frames fair-a from each, within minutes: as many distinct
    clients as the rule asks (with FRAMER's, if its tests ran, more). Each outcome carries
    its client and what that client had paid for verified work before its job, 0 here (a
    grant is no spend, nor is the framing job's own charge), so none counts: fair-a's score
    is as it was before the first. Before the spend was required the third counted as a
    failure."""
    accounts = [f"sybil-{n + 1}" for n in range(OUTVOTED_CLIENTS)]
    jobs = frame_by_the_clock(net, state, accounts)

    outcomes = recorded_outcomes(state, HONEST)[-OUTVOTED_CLIENTS:]
    assert sorted((o["job_id"].split("#")[0], o["outcome"], o["client_id"])
                  for o in outcomes) == sorted(
        (job, "outvoted", net.client_id(account))
        for job, account in zip(jobs, accounts, strict=True))
    assert [o["client_spent_micro"] for o in outcomes] == [0] * OUTVOTED_CLIENTS


def uploaded(net: Network, client: str, job_id: str, provider_id: str,
             timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in events(net, client, job_id):
            if e["type"] == "OutputsUploaded" and e["data"]["provider_id"] == provider_id:
                return dict(e["data"])
        time.sleep(0.2)
    raise AssertionError(f"{provider_id} uploaded nothing for {job_id}")


def refusals(net: Network, client: str, job_id: str) -> list[str]:
    """The providers whose upload of an output the storage API recorded as refused for the
    client's quota (Job `OutputRefused`: the network's witness, not a provider's word)."""
    return [e["data"]["provider_id"] for e in events(net, client, job_id)
            if e["type"] == "OutputRefused"]


def assert_abstained(net: Network, state: State, client: str, job_id: str,
                     provider_id: str) -> None:
    """A run whose output the client's quota refused: no outcome (no `outvoted`, nothing
    blamed), neither paid nor charged."""
    assert provider_id not in outcomes(net, client, job_id), outcomes(net, client, job_id)
    job = f"{job_id}:{provider_id}"
    assert state.transfers(f"pay:{job}") == [] and state.transfers(f"withheld:{job}") == []


def test_a_client_that_fills_its_quota_for_the_run_and_frees_it_for_the_check_frames_no_one(
    net: Network, state: State
) -> None:
    """The client fills its storage quota, so that fair-a's upload is refused (its run is
    empty-handed), then frees it before the network's check uploads: the check and the
    tie-break deliver and fair-a looks like a provider that skipped the work. But the storage
    API recorded the refusal: fair-a's run does not vote. The job keeps the check's result
    (the client pays for it); fair-a is neither paid nor charged, and nothing is recorded
    against it (no `outvoted`: not back on probation)."""
    before = reputations(state)[HONEST]
    # Less than 8 KiB left, whatever the other tests' jobs left in the space (at most
    # 40 KiB: the next test's), and room for two 8 KiB outputs once the filler is gone.
    used = stored_bytes(net, FRAMER)
    assert used <= QUOTA - 4096 - 2 * 8192, used
    net.put(FRAMER, "filler.bin", b"\0" * (QUOTA - used - 4096))
    job_id = submit(net, FRAMER, outputs=["out.bin"],
                    resources={"gpu_model": "A100"},
                    command="sleep 4; head -c 8192 /dev/zero > out.bin")

    first = uploaded(net, FRAMER, job_id, HONEST)
    assert first["missing"] == ["out.bin"], first  # refused: the quota was full
    r = net.http.delete(f"/storage/{net.client_id(FRAMER)}/filler.bin",
                        headers=net.headers(FRAMER))
    assert r.status_code in (200, 204), r.text
    job = ended(net, FRAMER, job_id)

    assert job["state"] == "SUCCEEDED" and job["providerId"] == "fair-b", job
    assert allocated(net, FRAMER, job_id) == ["fair-a", "fair-b", "fair-c"]
    assert refusals(net, FRAMER, job_id) == [HONEST]
    assert outcomes(net, FRAMER, job_id) == {"fair-b": "success", "fair-c": "success"}
    assert_abstained(net, state, FRAMER, job_id, HONEST)
    assert reputations(state)[HONEST] == before  # no `outvoted`, its score as it was
    assert int(job["costMicro"]) > 0, job


def test_a_job_whose_own_output_fills_the_quota_for_the_check_frames_no_one(
    net: Network, state: State
) -> None:
    """The other way round: fair-a delivers, and its output takes more than half the
    client's quota, so the network's check and its tie-break (the job is declared
    reproducible) are refused theirs. The storage API recorded both refusals: they do not
    vote, and fair-a's run stands alone, as one whose check could not be placed. The job
    keeps fair-a's result and succeeds; fair-a is paid and records a `success`; the check
    and tie-break are neither paid nor recorded."""
    before = reputations(state)[HONEST]
    # fair-a's output fits, whatever the other tests' jobs left (at most 16 KiB: the one
    # above's), and a second one cannot.
    assert stored_bytes(net, FRAMER) <= QUOTA - QUOTA * 5 // 8, stored_bytes(net, FRAMER)
    job_id = submit(net, FRAMER, outputs=["out.bin"],
                    verification={"reproducible": True}, resources={"gpu_model": "A100"},
                    command=f"head -c {QUOTA * 5 // 8} /dev/zero > out.bin")

    job = ended(net, FRAMER, job_id)

    assert uploaded(net, FRAMER, job_id, HONEST)["missing"] == []
    assert uploaded(net, FRAMER, job_id, "fair-b")["missing"] == ["out.bin"]
    assert allocated(net, FRAMER, job_id) == ["fair-a", "fair-b", "fair-c"]
    assert refusals(net, FRAMER, job_id) == ["fair-b", "fair-c"]
    assert job["state"] == "SUCCEEDED" and job["providerId"] == HONEST, job
    got = net.gql("query($id: ID!) { job(id: $id) { outputs { key } } }", FRAMER,
                  id=job_id)["job"]["outputs"]
    assert [o["key"] for o in got] == [f"jobs/{job_id}/runs/1/out.bin"]
    assert outcomes(net, FRAMER, job_id) == {HONEST: "success"}
    assert state.transfers(f"pay:{job_id}:{HONEST}") != []
    for check in ("fair-b", "fair-c"):
        assert_abstained(net, state, FRAMER, job_id, check)
    recorded = json.loads(reputations(state)[HONEST][1])
    assert recorded == [*json.loads(before[1]), "success"], (recorded, before)
