"""Events stored by an earlier version of the code still load: EntryPosted v1 had no `kind`,
JobSubmitted v1 no `sealed_env` (its env in the clear); before BLAKE3, JobSubmitted v2,
OutputsUploaded and ResultAccepted v1 and CanaryIssued v1 held bare sha256s; the provider's
ReputationRecorded v2 no `client_id`, v3 no `client_spent_micro`, v4 no
`client_outvotes_before`."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from eventsourcing.persistence import StoredEvent

from activities.grants import Grants
from api.features.jobs import OutputFile
from domain.application import Network
from domain.canary import Canary, judge_canary
from domain.job import Job
from domain.ledger import Account, transfer
from domain.provider import Provider
from domain.reputation import reputation
from infra.job_env import open_env
from infra.row_cipher import RowCipher
from infra.settings import Settings
from infra.signing import parse_grant
from ops.admin import recompute_reputation
from protocol import digest
from protocol.spec import JobSpec, parse_job_spec
from readmodel.projector import Projector
from readmodel.schema import ViewDB


def _as_version_1(app: Network, event: object) -> StoredEvent:
    """Store an event the way version 1 of EntryPosted was stored: no kind, no class_version."""
    stored = app.mapper.to_stored_event(event)  # type: ignore[arg-type]
    state = json.loads(stored.state)
    assert state.pop("class_version") == 2
    del state["kind"]
    return StoredEvent(
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=stored.topic,
        state=json.dumps(state).encode(),
    )


def test_entry_posted_v1_is_upcast_with_its_kind() -> None:
    app = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    source = Account(name="external:deposits", may_go_negative=True)
    target = Account(name="client:old", may_go_negative=False)
    app.save(source, target)
    transfer(source, target, "deposit:legacy", 5_000_000, "deposit")
    transfer(target, source, "refund:legacy", 1_000_000, "escrow refund")
    pending = [*source.collect_events(), *target.collect_events()]
    app.recorder.insert_events([_as_version_1(app, e) for e in pending])

    loaded: Account = app.repository.get(Account.create_id(name="client:old"))
    assert loaded.balance_micro == 4_000_000
    entries = [
        app.mapper.to_domain_event(n)
        for n in app.recorder.select_notifications(start=1, limit=100)
        if type(app.mapper.to_domain_event(n)).__name__ == "EntryPosted"
    ]
    assert sorted((e.transfer_id, e.kind) for e in entries) == [  # type: ignore[attr-defined]
        ("deposit:legacy", "deposit"), ("deposit:legacy", "deposit"),
        ("refund:legacy", "refund"), ("refund:legacy", "refund"),
    ]
    assert all(type(e).class_version == 2 for e in entries)  # type: ignore[attr-defined]


def test_new_entries_are_stored_as_version_2() -> None:
    app = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    app.deposit("new", 7, "first")
    raw = [json.loads(n.state) for n in app.recorder.select_notifications(start=1, limit=10)
           if n.topic.endswith("EntryPosted")]
    assert raw and all(s["class_version"] == 2 and s["kind"] == "deposit" for s in raw)


def test_job_submitted_v1_with_its_env_in_the_clear_still_loads_and_projects_names_alone(
    tmp_path: Path,
) -> None:
    """A job recorded before envs were sealed: it loads, a run still gets its env, and the
    views (rebuilt from the log) show the env's names alone."""
    settings = Settings(event_store="memory", home=tmp_path)
    app = Network(env=settings.eventsourcing_env())
    spec = parse_job_spec({"name": "old", "command": "true", "max_price_per_gpu_hour": "3",
                           "env": {"API_TOKEN": "tok-old"}})
    job = Job(job_id="job-v1", client_id="alice", spec=spec.model_dump(mode="json"),
              max_cost_micro=spec.max_cost_micro, sealed_env="")
    stored = app.mapper.to_stored_event(job.collect_events()[0])
    state = json.loads(stored.state)
    assert state.pop("class_version") == 3
    del state["sealed_env"]
    app.recorder.insert_events([StoredEvent(
        originator_id=stored.originator_id, originator_version=stored.originator_version,
        topic=stored.topic, state=json.dumps(state).encode(),
    )])

    loaded = app.job("job-v1")
    assert loaded.sealed_env == ""
    cipher = RowCipher(settings.payload_keys)
    assert open_env(cipher, "job-v1", loaded.spec["env"], loaded.sealed_env) == {
        "API_TOKEN": "tok-old"}
    views = ViewDB(settings)
    Projector(app, views).catch_up()
    (row,) = views.query("SELECT spec FROM jobs WHERE job_id = ?", ("job-v1",))
    assert json.loads(row["spec"])["env"] == {"API_TOKEN": ""}
    assert "tok-old" not in repr(views.query("SELECT * FROM job_events"))


OLD_IN, OLD_OUT, OLD_ANSWER = "ab" * 32, "cd" * 32, "ef" * 32


def _as_before_blake3(app: Network, event: object) -> StoredEvent:
    """Store an event as the code before BLAKE3 did: its digests as bare sha256s under
    `sha256`, and its class version as it was then."""
    stored = app.mapper.to_stored_event(event)  # type: ignore[arg-type]
    state = json.loads(stored.state)
    name = stored.topic.rpartition(".")[2]

    def bare(records: list[dict[str, object]]) -> None:
        for r in records:
            value = str(r.pop("digest"))
            assert value.startswith("sha256:")
            r["sha256"] = value.removeprefix("sha256:")

    if name == "JobSubmitted":
        assert state["class_version"] == 3
        state["class_version"] = 2
        bare(state["spec"]["inputs"])
    elif name in ("OutputsUploaded", "ResultAccepted"):
        assert state.pop("class_version") == 2
        bare(state["manifest"])
    elif name == "CanaryIssued":
        assert state.pop("class_version") == 2
        bare(state["expected"])
    return StoredEvent(originator_id=stored.originator_id,
                       originator_version=stored.originator_version, topic=stored.topic,
                       state=json.dumps(state).encode())


def test_digests_recorded_as_bare_sha256s_load_as_sha256_digests_and_still_verify(
    tmp_path: Path,
) -> None:
    """A job, its outputs and a canary recorded before BLAKE3: each digest loads as
    "sha256:<hex>", so staging checks those bytes with sha256 (worker_gpu/transfer.py), a
    grant names that digest, the read model shows it, and a canary of then is void
    against a BLAKE3 report rather than a mismatch."""
    settings = Settings(event_store="memory", home=tmp_path)
    app = Network(env=settings.eventsourcing_env())
    spec = parse_job_spec({"name": "old", "command": "true", "max_price_per_gpu_hour": "3",
                           "outputs": ["out.bin"],
                           "inputs": [{"key": "data/in.bin", "sha256": OLD_IN, "size": 3}]})
    job = Job(job_id="job-old", client_id="alice", spec=spec.model_dump(mode="json"),
              max_cost_micro=spec.max_cost_micro, sealed_env="")
    job.record_allocation(1, "prov-1", [0], 1_000_000)
    entry = {"path": "out.bin", "key": "jobs/job-old/runs/1/out.bin",
             "digest": f"sha256:{OLD_OUT}", "size": 3}
    job.record_step("outputs_uploaded", 1,
                    {"provider_id": "prov-1", "manifest": [entry], "missing": []})
    job.accept_result(1)
    canary = Canary(origin_job_id="job-old", provider_id="prov-1", job_id="job-canary",
                    client_id="u1", seed="0" * 32, gpu_indexes=[0], price_micro=1,
                    expected=[{"path": "answer.txt", "digest": f"sha256:{OLD_ANSWER}",
                               "size": 3}])
    app.recorder.insert_events([_as_before_blake3(app, e) for e in
                                [*job.collect_events(), *canary.collect_events()]])

    loaded = app.job("job-old")
    (pinned,) = JobSpec.model_validate(loaded.spec).inputs
    assert (pinned.digest, pinned.size) == (f"sha256:{OLD_IN}", 3)
    assert loaded.manifests == {1: [{**entry, "digest": f"sha256:{OLD_OUT}"}]}
    grants = Grants(settings, "alice", "job-old", 1, "prov-1")
    url = grants.get("data/in.bin", str(pinned.digest), 3)
    granted = parse_grant("GET", "alice", "data/in.bin", dict(parse_qsl(urlsplit(url).query)))
    assert granted.digest == f"sha256:{OLD_IN}"

    (expected,) = app.canary("job-old", "prov-1").expected_outputs()  # type: ignore[union-attr]
    assert expected.digest == f"sha256:{OLD_ANSWER}"
    judged = judge_canary([expected], 0, False, [("answer.txt", digest.of_bytes(b"42\n"), 3)],
                          [])
    assert judged.outcome == "void" and "sha256" in judged.reason

    views = ViewDB(settings)
    Projector(app, views).catch_up()
    (row,) = views.query("SELECT outputs FROM jobs WHERE job_id = ?", ("job-old",))
    (shown,) = [OutputFile.from_record(o) for o in json.loads(row["outputs"])]
    assert (shown.path, shown.digest, shown.size) == ("out.bin", f"sha256:{OLD_OUT}", 3)


def test_new_digests_are_stored_blake3_and_said_so() -> None:
    app = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    data = b"new bytes"
    spec = parse_job_spec({"name": "new", "command": "true", "max_price_per_gpu_hour": "3",
                           "inputs": [{"key": "in.bin", "digest": digest.of_bytes(data),
                                       "size": len(data)}]})
    app.open_client("alice", 10_000_000)
    app.submit_job("job-new", "alice", spec)
    raw = {n.topic.rpartition(".")[2]: json.loads(n.state)
           for n in app.recorder.select_notifications(start=1, limit=50)}
    submitted = raw["JobSubmitted"]
    assert submitted["class_version"] == 3
    assert submitted["spec"]["inputs"][0]["digest"] == digest.of_bytes(data)
    assert "sha256" not in submitted["spec"]["inputs"][0]
    assert digest.of_bytes(data).startswith("blake3:")


def _store_outcomes_as(app: Network, provider: Provider, version: int, *dropped: str
                       ) -> None:
    """Store the provider's events with its ReputationRecorded ones written as `version`
    wrote them: without the fields added since (`dropped`)."""
    stored = []
    for event in provider.collect_events():
        s = app.mapper.to_stored_event(event)
        state = json.loads(s.state)
        if s.topic.endswith("ReputationRecorded"):
            assert state["class_version"] == 5
            state["class_version"] = version
            for name in dropped:
                del state[name]
        stored.append(StoredEvent(originator_id=s.originator_id,
                                  originator_version=s.originator_version, topic=s.topic,
                                  state=json.dumps(state).encode()))
    app.recorder.insert_events(stored)


def test_outcomes_recorded_before_they_named_their_client_load_and_score_as_then(
    tmp_path: Path,
) -> None:
    """ReputationRecorded v2 had no `client_id`: it loads with none (""), and an `outvoted`
    of no known client never counts, so three of them (as three clients' jobs would have
    been) leave the score where it was, for the aggregate, the views and a recompute."""
    settings = Settings(event_store="sqlite", home=tmp_path)
    app = Network(env=settings.eventsourcing_env())
    provider = Provider(provider_id="p-old", region="eu", price_per_gpu_hour_micro=1, gpus=[])
    provider.record_outcome("job-0", "success", at=1_000.0, client_id="alice")
    for n, client in enumerate(["alice", "bob", "carol"]):
        provider.record_outcome(f"job-{n + 1}", "outvoted", at=2_000.0 + n, client_id=client)
    _store_outcomes_as(app, provider, 2, "client_id", "client_spent_micro",
                       "client_outvotes_before")

    loaded = app.provider("p-old")
    assert loaded.outcome_clients == ["", "", "", ""]
    assert loaded.reputation_at(2_002.0).score == reputation([("success", 1_000.0)],
                                                             2_002.0).score
    views = ViewDB(settings)
    try:
        Projector(app, views).catch_up()
        (row,) = views.query("SELECT reputation, outcome_clients FROM providers")
    finally:
        views.close()
    assert json.loads(row["outcome_clients"]) == ["", "", "", ""]
    assert row["reputation"] == reputation([("success", 1_000.0)], 1_000.0).score
    assert recompute_reputation(settings)["all_match"]


def test_outcomes_recorded_before_they_carried_the_clients_spend_load_and_score_as_unpaid(
    tmp_path: Path,
) -> None:
    """ReputationRecorded v3 had no `client_spent_micro`: it loads with 0, so an
    `outvoted` of it never counts (three clients' within a window, which counted then,
    count no more: nothing says those clients had paid for verified work), and every other
    outcome scores as it did. The aggregate, the views and a recompute agree."""
    settings = Settings(event_store="sqlite", home=tmp_path)
    app = Network(env=settings.eventsourcing_env())
    provider = Provider(provider_id="p-v3", region="eu", price_per_gpu_hour_micro=1, gpus=[])
    provider.record_outcome("job-0", "success", at=1_000.0, client_id="alice",
                            client_spent_micro=10**9)
    provider.record_outcome("job-1", "failure", at=1_500.0, client_id="alice",
                            client_spent_micro=10**9)
    for n, client in enumerate(["alice", "bob", "carol"]):
        provider.record_outcome(f"job-{n + 2}", "outvoted", at=2_000.0 + n, client_id=client,
                                client_spent_micro=10**9)
    as_v4 = provider.reputation_at(2_002.0)
    _store_outcomes_as(app, provider, 3, "client_spent_micro", "client_outvotes_before")

    loaded = app.provider("p-v3")
    assert loaded.outcome_clients == ["alice", "alice", "alice", "bob", "carol"]
    assert loaded.outcome_spent == [0, 0, 0, 0, 0]
    scored = [("success", 1_000.0), ("failure", 1_500.0)]
    assert loaded.reputation_at(2_002.0).score == reputation(scored, 2_002.0).score
    assert as_v4.score < reputation(scored, 2_002.0).score  # paid for, the third counted
    views = ViewDB(settings)
    try:
        Projector(app, views).catch_up()
        (row,) = views.query("SELECT reputation, outcome_spent FROM providers")
    finally:
        views.close()
    assert json.loads(row["outcome_spent"]) == [0, 0, 0, 0, 0]
    assert row["reputation"] == reputation(scored, 1_500.0).score
    assert recompute_reputation(settings)["all_match"]
    app.close()


def test_outcomes_recorded_before_they_carried_the_clients_outvotes_load_and_score_as_then(
    tmp_path: Path,
) -> None:
    """ReputationRecorded v4 had no `client_outvotes_before`: it loads as v5 with 0, so each
    outcome is judged by its client's spend alone, as it was then (the price per account):
    three clients that paid 10 credits each, outvoting a provider in two windows, cost it a
    failure in each, where stamped with their earlier `outvoted` the second window's would
    not count. The aggregate, the views and a recompute agree."""
    settings = Settings(event_store="sqlite", home=tmp_path)
    app = Network(env=settings.eventsourcing_env())
    provider = Provider(provider_id="p-v4", region="eu", price_per_gpu_hour_micro=1, gpus=[])
    provider.record_outcome("job-0", "success", at=1_000.0, client_id="alice",
                            client_spent_micro=10**7)
    second = 2_000.0 + 31 * 86_400.0
    for window, start in enumerate([2_000.0, second]):
        for n, client in enumerate(["alice", "bob", "carol"]):
            provider.record_outcome(f"job-{window}-{n}", "outvoted", at=start + n,
                                    client_id=client, client_spent_micro=10**7,
                                    client_outvotes_before=window)
    as_v5 = provider.reputation_at(second + 2)
    _store_outcomes_as(app, provider, 4, "client_outvotes_before")

    loaded = app.provider("p-v4")
    assert loaded.outcome_outvotes == [0] * 7
    assert loaded.outcome_spent == [10**7] * 7
    scored = [("success", 1_000.0), ("failure", 2_002.0), ("failure", second + 2)]
    assert loaded.reputation_at(second + 2).score == reputation(scored, second + 2).score
    assert as_v5.score > loaded.reputation_at(second + 2).score  # v5: the second's count none
    views = ViewDB(settings)
    try:
        Projector(app, views).catch_up()
        (row,) = views.query("SELECT reputation, outcome_outvotes FROM providers")
    finally:
        views.close()
    assert json.loads(row["outcome_outvotes"]) == [0] * 7
    assert row["reputation"] == reputation(scored, second + 2).score
    assert recompute_reputation(settings)["all_match"]
    app.close()
