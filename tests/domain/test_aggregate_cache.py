"""The application's aggregate cache (domain/app_base.py AggregateCache): a load is as
current as the store, whoever wrote it, and hands out a copy of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.application import Network
from domain.ledger import FEES, client_account
from infra.settings import Settings
from tests.domain.support import run_lifecycle
from tests.support.stores import store_settings

PERSISTENT = ("sqlite", "postgres")  # two applications over one store: two processes


@pytest.fixture(params=PERSISTENT)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with store_settings(request.param, tmp_path) as s:
        yield s


def test_a_load_sees_what_another_process_stored_since(store: Settings) -> None:
    this, other = (Network(env=store.eventsourcing_env()) for _ in range(2))
    run_lifecycle(this)
    alice = client_account("alice")
    before = this.balance(alice)  # loaded, and so cached, here
    assert this.job("job-1").state == "SUCCEEDED"
    assert other.deposit("alice", 5, "after") == before + 5  # stored by the other one
    assert this.balance(alice) == before + 5
    assert this.account(alice).has_posted("deposit:after")
    # And the other way round: what this one stores, the other one (cached too) sees.
    this.deposit("alice", 7, "later")
    assert other.balance(alice) == before + 12


def test_a_load_hands_out_its_own_copy(store: Settings) -> None:
    app = Network(env=store.eventsourcing_env())
    run_lifecycle(app)
    job = app.job("job-1")
    job.recorded.append("not stored")
    job.allocations[99] = "nobody"
    account = app.account(FEES)
    account.posted.append("not stored")
    again = app.job("job-1")
    assert "not stored" not in again.recorded and 99 not in again.allocations
    assert "not stored" not in app.account(FEES).posted
    assert again.recorded is not app.job("job-1").recorded
