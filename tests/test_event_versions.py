"""Events stored by an earlier version of the code still load: EntryPosted v1 had no `kind`,
JobSubmitted v1 no `sealed_env` (its env in the clear)."""

from __future__ import annotations

import json
from pathlib import Path

from eventsourcing.persistence import StoredEvent

from domain.application import Network
from domain.job import Job
from domain.ledger import Account, transfer
from infra.job_env import open_env
from infra.row_cipher import RowCipher
from infra.settings import Settings
from protocol.spec import parse_job_spec
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
    assert state.pop("class_version") == 2
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
