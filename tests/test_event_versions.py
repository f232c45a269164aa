"""Events stored by an earlier version of the code still load: EntryPosted v1 had no `kind`."""

from __future__ import annotations

import json

from eventsourcing.persistence import StoredEvent

from domain.application import Network
from domain.ledger import Account, transfer


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
