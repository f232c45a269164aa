"""Providers' own controls, GPU health, liveness and queue positions, through the real API.

The API app runs under uvicorn in this process (its projection, heartbeat ingest
and liveness monitor included) against a real Temporal dev server; heartbeats
come over HTTP from threads, as agents send them. Callers are accounts: "prov" owns
the providers it registers, "alice" runs a node, "admin" was made on the stores.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from api.json_body import MAX_JSON_DEPTH
from protocol.spec import parse_job_spec
from tests.support.api_client import Api, api_in_thread
from tests.support.graphql import HEARTBEAT, REFUSAL, RESUME, SET_PRICE, SUSPEND

INTERVAL = 1.0  # heartbeat interval: offline after 3 missed (3.5 s)

EXPLAIN = """query($s: JSON!) { explain(spec: $s) { __typename
  ... on Explanation { eligible { providerId gpuIndexes } rejected { providerId reason } } } }"""

EXPLAIN_GPUS = """query($s: JSON!) { explain(spec: $s) { __typename
  ... on Explanation { gpus { providerId index eligible reason score } } } }"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Api]:
    with api_in_thread(tmp_path_factory.mktemp("controls"), temporal_server,
                       provider_heartbeat_interval_s=INTERVAL) as api:
        yield api


@dataclass
class Beater:
    """An agent's heartbeat: every half interval, with this telemetry, until paused."""

    api: Api
    provider_id: str
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    paused: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.api.url, timeout=30,
                          headers=self.api.headers("prov")) as http:
            while not self.stopped.wait(INTERVAL / 2):
                if not self.paused.is_set():
                    http.post("/graphql", json={
                        "query": HEARTBEAT,
                        "variables": {"id": self.provider_id, "t": self.telemetry},
                    }).raise_for_status()


@pytest.fixture
def beating(api: Api) -> Iterator[Callable[[str], Beater]]:
    beaters: list[tuple[Beater, threading.Thread]] = []

    def start(provider_id: str) -> Beater:
        beater = Beater(api, provider_id)
        thread = threading.Thread(target=beater.run, daemon=True)
        thread.start()
        beaters.append((beater, thread))
        return beater

    yield start
    for beater, thread in beaters:
        beater.stopped.set()
        thread.join(timeout=10)


def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            if result is not False:
                return result
            assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def spec(gpus: int = 2, **over: Any) -> dict[str, Any]:
    return {"name": "x", "command": "true", "max_price_per_gpu_hour": "3", "timeout": 600,
            "resources": {"gpus": gpus, "gpu_model": "H100"}, **over}


def judged(api: Api, provider_id: str, s: dict[str, Any]) -> str | list[int]:
    """The provider's GPUs this spec would get, or why it would not run there."""
    found = api.gql(EXPLAIN, s=s)["explain"]
    for offer in found["eligible"]:
        if offer["providerId"] == provider_id:
            return offer["gpuIndexes"]
    return next(r["reason"] for r in found["rejected"] if r["providerId"] == provider_id)


def test_suspend_and_resume_a_gpu(api: Api, beating: Callable[[str], Beater]) -> None:
    api.register("p-suspend")
    beating("p-suspend")
    assert judged(api, "p-suspend", spec(2)) == [0, 1]

    after = api.gql(SUSPEND, id="p-suspend", i=1)["suspendGpu"]
    assert [(g["index"], g["status"]) for g in after["gpus"]] == [(0, "online"), (1, "suspended")]
    assert judged(api, "p-suspend", spec(2)) == "suspended"
    assert judged(api, "p-suspend", spec(1)) == [0]
    api.gql(SUSPEND, id="p-suspend", i=1)  # twice: one event

    after = api.gql(RESUME, id="p-suspend", i=1)["resumeGpu"]
    assert [g["status"] for g in after["gpus"]] == ["online", "online"]
    assert judged(api, "p-suspend", spec(2)) == [0, 1]
    assert api.events("p-suspend").count("GpuSuspended") == 1
    assert api.events("p-suspend")[-1] == "GpuResumed"


def test_controls_name_the_field_in_their_errors(api: Api) -> None:
    api.register("p-errors")
    # What the owner can mend is a FieldError result; what is not theirs, an error.
    assert api.refusal(SUSPEND, id="p-errors", i=7) == (
        "gpu_index: p-errors has no GPU 7 (it has 0, 1)"
    )
    assert api.error(RESUME, id="nobody", i=0) == (
        "forbidden: provider 'nobody' is not one of yours"
    )
    assert api.refusal(RESUME, "admin", id="nobody", i=0) == "providerId: no provider 'nobody'"
    assert api.refusal(SET_PRICE, id="p-errors", p="cheap") == (
        "pricePerGpuHour: 'cheap' is not a number of credits: write digits, and a point and "
        'digits after it for a fraction, such as "2.5" or "0.5"'
    )
    assert api.refusal(SET_PRICE, id="p-errors", p="0") == (
        "pricePerGpuHour: must be more than 0 credits, got 0"
    )
    assert api.refusal(HEARTBEAT, id="p-errors", t=[{"index": "zero"}]) == (
        "telemetry.0.index: must be a GPU index, a whole number from 0 to 1023"
    )
    assert api.refusal(HEARTBEAT, "admin", id="nobody", t=[]) == (
        "providerId: no provider 'nobody'; register first"
    )


def test_a_price_change_applies_to_new_quotes(api: Api, beating: Callable[[str], Beater]) -> None:
    api.register("p-price", price_micro=2_000_000)
    beating("p-price")
    after = api.gql(SET_PRICE, id="p-price", p="3.25")["setPrice"]
    assert (after["pricePerGpuHourMicro"], after["pricePerGpuHour"]) == (3_250_000, "3.25")
    assert judged(api, "p-price", spec(1)) == "price above the job's maximum"
    assert judged(api, "p-price", spec(1, max_price_per_gpu_hour="3.25")) == [0]
    assert api.events("p-price")[-1] == "PriceChanged"


def test_ecc_errors_degrade_a_gpu_until_they_clear(
    api: Api, beating: Callable[[str], Beater]
) -> None:
    api.register("p-ecc")
    beater = beating("p-ecc")
    healthy = [{"index": 0, "utilization_pct": 10, "ecc_errors": 0, "xid_errors": 0},
               {"index": 1, "utilization_pct": 20, "ecc_errors": 0, "xid_errors": 0}]
    beater.telemetry = healthy
    time.sleep(INTERVAL)
    assert "GpuDegraded" not in api.events("p-ecc")
    beater.telemetry = [{**healthy[0], "ecc_errors": 2}, healthy[1]]

    def degraded() -> bool:
        gpus = api.provider("p-ecc")["gpus"]
        return [(g["status"], g["reason"]) for g in gpus] == [
            ("degraded", "ECC errors: 2"), ("online", "")]

    eventually(degraded)
    assert judged(api, "p-ecc", spec(2)) == "degraded: GPU 0 ECC errors: 2"
    assert judged(api, "p-ecc", spec(1)) == [1]
    per_gpu = api.gql(EXPLAIN_GPUS, s=spec(1))["explain"]["gpus"]
    mine = [(g["index"], g["eligible"], g["reason"]) for g in per_gpu
            if g["providerId"] == "p-ecc"]
    assert mine == [(1, True, ""), (0, False, "degraded: ECC errors: 2")]
    time.sleep(2 * INTERVAL)  # more beats with the same errors: no more events
    assert api.events("p-ecc").count("GpuDegraded") == 1

    beater.telemetry = healthy
    eventually(lambda: [g["status"] for g in api.provider("p-ecc")["gpus"]] == ["online"] * 2)
    assert judged(api, "p-ecc", spec(2)) == [0, 1]
    assert api.events("p-ecc").count("GpuRecovered") == 1

    samples = api.gql('{ provider(providerId: "p-ecc") { telemetry(limit: 3) {'
                      ' at gpus { index utilizationPct eccErrors } } } }')["provider"]["telemetry"]
    assert len(samples) == 3
    assert samples[-1]["gpus"] == [{"index": 0, "utilizationPct": 10, "eccErrors": 0},
                                   {"index": 1, "utilizationPct": 20, "eccErrors": 0}]


def test_liveness_has_hysteresis(api: Api, beating: Callable[[str], Beater]) -> None:
    api.register("p-live")
    beater = beating("p-live")
    time.sleep(INTERVAL)
    beater.paused.set()  # one beat late, another missed: not offline
    time.sleep(1.5 * INTERVAL)
    beater.paused.clear()
    time.sleep(2 * INTERVAL)
    assert "ProviderWentOffline" not in api.events("p-live")
    assert api.provider("p-live")["status"] == "online"

    beater.paused.set()
    went = eventually(lambda: api.provider("p-live")["status"] == "offline"
                      and "ProviderWentOffline" in api.events("p-live") and api.provider("p-live"))
    assert went["statusReason"].startswith("missed ")
    assert {g["status"] for g in went["gpus"]} == {"offline"}
    assert judged(api, "p-live", spec(1)) == "offline"
    time.sleep(2 * INTERVAL)
    assert api.events("p-live").count("ProviderWentOffline") == 1

    beater.paused.clear()
    eventually(lambda: api.provider("p-live")["status"] == "online")
    assert api.events("p-live")[-2:] == ["ProviderWentOffline", "ProviderCameOnline"]
    assert judged(api, "p-live", spec(1)) == [0]


QUEUE = """query($n: String!) { queue(name: $n) { position jobId name priority expectedStart
  mine } }"""
JOB = "query($id: ID!) { job(id: $id) { state queue priority queuePosition expectedStart } }"


def test_queue_positions_follow_the_schedulers_order(
    api: Api, beating: Callable[[str], Beater]
) -> None:
    # alice runs the node (and is one of its clients); prov's provider joins it.
    node = api.gql('mutation { registerNode(nodeId: "n-l4", region: "eu", operator: "alice")'
                   ' { ... on Node { nodeId region queues { name } } } }', "alice")
    assert node["registerNode"] == {"nodeId": "n-l4", "region": "eu",
                                    "queues": [{"name": "default"}]}
    api.gql("""mutation { configureQueue(nodeId: "n-l4", name: "l4", gpuModels: ["L4"],
              priorityLevels: 3, maxGpusPerClient: 4, fairShare: true) { __typename } }""",
            "alice")
    nodes = api.gql("{ nodes { nodeId queues { name gpuModels priorityLevels maxGpusPerClient"
                    " fairShare waiting } } }")["nodes"]
    (l4,) = [q for n in nodes if n["nodeId"] == "n-l4" for q in n["queues"] if q["name"] == "l4"]
    assert l4 == {"name": "l4", "gpuModels": ["L4"], "priorityLevels": 3,
                  "maxGpusPerClient": 4, "fairShare": True, "waiting": 0}
    api.register("p-l4", gpus=1, model="NVIDIA L4", node="n-l4")
    beating("p-l4")
    network = api.services.network
    jobs = [("a1", "alice", 0, 1), ("a2", "alice", 0, 1), ("a3", "alice", 0, 1),
            ("b1", "bob", 0, 1), ("d1", "dave", 0, 2), ("c1", "carol", 2, 1)]
    for name in ("alice", "bob", "carol", "dave"):  # sign up first: jobs go in back to back
        api.client_id(name)
    for job_id, client, priority, gpus in jobs:
        network.open_client(api.client_id(client), 100_000_000)
        network.submit_job(job_id, api.client_id(client), parse_job_spec(
            {**spec(gpus, queue="n-l4/l4", priority=priority), "resources": {"gpus": gpus}}))
        network.admit_job(job_id)
    now = time.time()

    line = eventually(lambda: (q := api.gql(QUEUE, "alice", n="n-l4/l4")["queue"])
                      and len(q) == 6 and q)
    assert api.error(QUEUE, "bob", n="n-l4/l4") == (  # only the node's operator sees its line
        "forbidden: this needs the node operator role (sign in with an account, or send an "
        "API key, that holds it)")
    # Priority first; then fair share: each next job to the client holding the fewest GPUs.
    assert [j["jobId"] for j in line] == ["c1", "a1", "b1", "d1", "a2", "a3"]
    assert [j["position"] for j in line] == [1, 2, 3, 4, 5, 6]
    assert [j["name"] for j in line] == ["", "x", "", "", "x", "x"]  # others' names are theirs
    # One L4 GPU, each job for its whole 600 s timeout; d1 asks for 2: never on this queue.
    starts = [j["expectedStart"] and datetime.fromisoformat(j["expectedStart"]).timestamp() - now
              for j in line]
    assert starts[3] is None
    for got, expected in zip([s for s in starts if s is not None], [0, 600, 1200, 1800, 2400],
                             strict=True):
        assert got == pytest.approx(expected, abs=15)

    job = api.gql(JOB, "bob", id="b1")["job"]
    assert (job["state"], job["queue"], job["priority"], job["queuePosition"]) == (
        "QUEUED", "n-l4/l4", 0, 3)
    # The same estimate, asked a moment later: "now + wait", in whole seconds.
    later = datetime.fromisoformat(job["expectedStart"])
    first = datetime.fromisoformat(line[2]["expectedStart"])
    assert 0 <= (later - first).total_seconds() <= 1
    assert api.gql(JOB, "carol", id="c1")["job"]["queuePosition"] == 1

    # What each waits for, in words: the first in line could start now; one behind others
    # counts them; one that no provider of the node could ever take (2 GPUs on a machine of
    # one) says so, and why, provider by provider.
    waits = "query($id: ID!) { job(id: $id) { waitingFor } }"
    assert api.gql(waits, "carol", id="c1")["job"]["waitingFor"] == [
        "a GPU fits it and is free: the scheduler places it within seconds"]
    assert api.gql(waits, "alice", id="a2")["job"]["waitingFor"] == [
        "4 jobs ahead of it in the queue"]
    assert api.gql(waits, "dave", id="d1")["job"]["waitingFor"] == [
        "no provider of node n-l4 could ever run this job as specified: it needs 2 GPUs on "
        "one machine of a model its queue serves (L4) with the process runtime (p-l4: 1 of its "
        "1 GPUs fit the job's model and memory, 2 needed on one machine); it waits until such "
        "a provider joins",
        "3 jobs ahead of it in the queue"]


def test_a_job_held_back_by_the_per_client_cap_says_so(
    api: Api, beating: Callable[[str], Beater]
) -> None:
    """A queue's per-client cap holds a client's second job while a GPU is free: the job
    says that is what it waits for (api.waiting), and another client's job, under no cap,
    says a GPU is free for it."""
    api.gql('mutation { registerNode(nodeId: "n-cap", region: "eu", operator: "alice")'
            ' { ... on Node { nodeId } } }', "alice")
    api.gql("""mutation { configureQueue(nodeId: "n-cap", name: "capped", gpuModels: ["H100"],
              priorityLevels: 1, maxGpusPerClient: 1, fairShare: true) { __typename } }""",
            "alice")
    api.register("p-cap", gpus=2, node="n-cap")
    beating("p-cap")
    network = api.services.network
    for job_id, client in (("cap-1", "alice"), ("cap-2", "alice"), ("cap-b", "bob")):
        network.open_client(api.client_id(client), 100_000_000)
        network.submit_job(job_id, api.client_id(client), parse_job_spec(
            spec(1, queue="n-cap/capped")))
        network.admit_job(job_id)
    # alice's first job holds one of the two GPUs (as the scheduler would place it).
    placed = network.allocate("cap-1", 1, set(), {"p-cap"})
    assert (placed.provider_id, len(placed.gpu_indexes)) == ("p-cap", 1), placed
    waits = "query($id: ID!) { job(id: $id) { state waitingFor } }"
    cap = ("the queue lets a client hold at most 1 GPUs at once; the client's jobs hold 1 "
           "and this one needs 1: it starts when one ends")

    def capped() -> list[str]:
        job = api.gql(waits, "alice", id="cap-2")["job"]
        assert job["state"] == "QUEUED" and cap in job["waitingFor"], job
        return list(job["waitingFor"])

    said = eventually(capped)
    assert not any(w.startswith("no provider can take it now") for w in said), said  # one is free
    assert api.gql(waits, "bob", id="cap-b")["job"]["waitingFor"] == [
        "a GPU fits it and is free: the scheduler places it within seconds"]


def test_earnings_of_a_provider(api: Api) -> None:
    api.register("p-earn")
    found = api.gql('{ providerEarnings(providerId: "p-earn") { providerId balanceMicro'
                    ' earnedMicro withdrawnMicro entries { kind amountMicro } } }')
    assert found["providerEarnings"] == {"providerId": "p-earn", "balanceMicro": 0,
                                         "earnedMicro": 0, "withdrawnMicro": 0, "entries": []}
    assert api.error('{ providerEarnings(providerId: "nobody") { balanceMicro } }') == (
        "forbidden: provider 'nobody' is not one of yours"
    )
    assert api.error('{ providerEarnings(providerId: "nobody") { balanceMicro } }',
                     "admin") == "providerId: no provider 'nobody'"


def test_heartbeats_are_samples_not_events(api: Api) -> None:
    api.register("p-samples", gpus=1)
    before = api.events("p-samples")
    for n in range(5):
        api.gql(HEARTBEAT, id="p-samples", t=[{"index": 0, "utilization_pct": n}])
    assert api.events("p-samples") == before
    rows = api.services.views.query(
        "SELECT beats FROM provider_liveness WHERE provider_id = 'p-samples'")
    assert rows[0]["beats"] == 6  # the registration counts as one

    # The same without GraphQL's cost per request: POST the telemetry list.
    owner, admin = api.headers("prov"), api.headers("admin")
    ok = api.http.post("/providers/p-samples/heartbeat", json=[{"index": 0, "ecc_errors": 0}],
                       headers=owner)
    assert (ok.status_code, ok.json()) == (200, {"ok": True})
    assert api.http.post("/providers/p-samples/heartbeat",  # no telemetry
                         headers=owner).status_code == 200
    bad = api.http.post("/providers/p-samples/heartbeat", json=[{"index": -1}], headers=owner)
    assert (bad.status_code, bad.json()) == (
        400, {"detail": "telemetry.0.index: must be at least 0"})
    deep = api.http.post("/providers/p-samples/heartbeat", content=b"[" * 100_000,
                         headers=owner)  # json.loads: RecursionError, a 500
    assert deep.status_code == 400
    assert f"may nest at most {MAX_JSON_DEPTH} levels" in deep.json()["detail"]
    unknown = api.http.post("/providers/nobody/heartbeat", json=[], headers=admin)
    assert (unknown.status_code, unknown.json()) == (
        404, {"detail": "providerId: no provider 'nobody'; register first"})
    assert api.http.post("/providers/p-samples/heartbeat", json=[]).status_code == 401
    assert api.http.post("/providers/p-samples/heartbeat", json=[],
                         headers=api.headers("bob")).status_code == 403
    rows = api.services.views.query(
        "SELECT beats FROM provider_liveness WHERE provider_id = 'p-samples'")
    assert rows[0]["beats"] == 8


def test_reputation_shows_its_components(api: Api) -> None:
    api.register("p-rep")
    network = api.app.state.services.network
    network.record_reputation("rep-j1", "p-rep", "success")
    network.record_reputation("rep-j2", "p-rep", "lost")

    def shown() -> dict[str, Any] | bool:
        found = api.gql('{ provider(providerId: "p-rep") { reputation reputationDetail {'
                        ' score confidence probation outcomes successes lost mismatches } } }')
        detail = found["provider"]["reputationDetail"]
        return found["provider"] if detail["outcomes"] == 2 else False

    found = eventually(shown)
    detail = found["reputationDetail"]
    assert detail["probation"] and detail["mismatches"] == 0
    assert detail["successes"] == pytest.approx(1.0, rel=1e-6)
    assert detail["lost"] == pytest.approx(1.0, rel=1e-6)
    assert found["reputation"] == pytest.approx(2 / (2 + 4), rel=1e-6)
    assert detail["confidence"] == pytest.approx(2 / 12, rel=1e-6)


def test_an_outvoted_run_is_shown_but_moves_no_figure_of_the_score(api: Api) -> None:
    """`outvoted` (workflows/runs.py) is on the provider's record and shown, but the score
    the read model keeps (as of its latest scored outcome) and every figure it is made of
    stay as they were: a majority of a client's command is no evidence against a provider."""
    api.register("p-outvoted")
    network = api.app.state.services.network

    def stored(outcomes: list[str]) -> Any:
        row = api.services.views.query("SELECT reputation, outcomes FROM providers"
                                       " WHERE provider_id = 'p-outvoted'")[0]
        return row["reputation"] if json.loads(row["outcomes"]) == outcomes else False

    network.record_reputation("ov-j1", "p-outvoted", "success")
    before = eventually(lambda: stored(["success"]))
    time.sleep(0.05)  # the outvoted run is stamped later: the score is not taken as of it
    network.record_reputation("ov-j2", "p-outvoted", "outvoted")
    assert eventually(lambda: stored(["success", "outvoted"])) == before
    detail = api.gql('{ provider(providerId: "p-outvoted") { reputationDetail {'
                     ' score probation outcomes successes mismatches outvoted } } }'
                     )["provider"]["reputationDetail"]
    assert detail["outcomes"] == 1 and detail["probation"] and detail["mismatches"] == 0
    assert detail["outvoted"] == pytest.approx(1.0, rel=1e-6)
    assert detail["score"] == pytest.approx(2 / 3, rel=1e-6)


GRANT = f"""mutation($c: String!, $a: String!, $m: String!) {{
  grantCredits(email: $c, amount: $a, memo: $m) {{
    ... on CreditsGranted {{ clientId balanceMicro }} {REFUSAL} }} }}"""


def test_an_admin_grants_credits_and_the_ledger_shows_it(api: Api) -> None:
    api.client_id("granted")  # signs up
    client = "granted@api.test"
    before = api.gql("{ account { balanceMicro } }", "granted")["account"]["balanceMicro"]
    granted = api.gql(GRANT, "admin", c=client, a="12.5", m="trial credits")["grantCredits"]
    assert granted == {"__typename": "CreditsGranted", "clientId": api.client_id("granted"),
                       "balanceMicro": before + 12_500_000}
    deadline = time.monotonic() + 10
    while True:  # the ledger is a projection: it follows in a moment
        rows = api.gql("{ ledger(limit: 5) { kind amountMicro counterparty memo } }",
                       "granted")["ledger"]
        if (rows and rows[0]["kind"] == "grant") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows[0] == {"kind": "grant", "amountMicro": 12_500_000,
                       "counterparty": "external:deposits",
                       "memo": "granted by admin@api.test: trial credits"}
    # Only an admin grants; every bad value is refused naming its field (a FieldError).
    assert "forbidden" in api.error(GRANT, "granted", c=client, a="1", m="")
    assert api.refusal(GRANT, "admin", c=client, a="0", m="").startswith("amount: must be more")
    assert api.refusal(GRANT, "admin", c=client, a="1000000000", m="").startswith(
        "amount: must be")
    for misread in ("1e9", "1_000", "\u0663", " 5"):  # Decimal reads each; a person may not
        assert api.refusal(GRANT, "admin", c=client, a=misread, m="").startswith(
            f"amount: {misread!r} is not a number of credits")
    assert api.refusal(GRANT, "admin", c=client, a="lots", m="").startswith("amount: ")
    assert api.refusal(GRANT, "admin", c=client, a="0.0000001", m="") == (
        "amount: '0.0000001' has more than 6 decimal places")
    assert api.refusal(GRANT, "admin", c=client, a="1", m="x" * 201).startswith("memo: ")
    assert api.refusal(GRANT, "admin", c="nobody@api.test", a="1", m="") == (
        "email: no client account 'nobody@api.test'")
    api.client_id("alice")  # an operator and a client; "prov" is one too: both may be granted
    assert api.gql(GRANT, "admin", c="alice@api.test", a="1", m="")["grantCredits"][
        "balanceMicro"] > 0
