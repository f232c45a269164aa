"""Fixtures for the domain tests: the same tests run on every event store.

`settings` is parametrised over "memory", "sqlite" (a file under tmp_path) and
"postgres" (a fresh schema per test in the `test` database, dropped afterwards).
When PostgreSQL cannot be reached only the postgres parameter is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domain.application import Network
from infra.settings import Settings
from readmodel.schema import ViewDB
from tests.support.stores import STORES, store_settings


@pytest.fixture(params=STORES)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with store_settings(request.param, tmp_path) as s:
        yield s


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    """PostgreSQL only: for the tests about schemas."""
    with store_settings("postgres", tmp_path) as s:
        yield s


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Iterator[Settings]:
    with store_settings("sqlite", tmp_path) as s:
        yield s


@pytest.fixture
def app(settings: Settings) -> Iterator[Network]:
    network = Network(env=settings.eventsourcing_env())
    try:
        yield network
    finally:
        network.close()


@pytest.fixture
def open_app(settings: Settings) -> Iterator[Callable[[], Network]]:
    """More Network instances over the same store (as separate processes would have)."""
    opened: list[Network] = []

    def make() -> Network:
        network = Network(env=settings.eventsourcing_env())
        opened.append(network)
        return network

    yield make
    for network in opened:
        network.close()


@pytest.fixture
def open_views(settings: Settings) -> Iterator[Callable[[], ViewDB]]:
    """Open ViewDB connections over the store's views; all closed before the schema drops.

    The memory store keeps its views in an in-memory SQLite database that only
    one connection can see, so there every call returns the same ViewDB.
    """
    opened: list[ViewDB] = []

    def make() -> ViewDB:
        if settings.event_store == "memory" and opened:
            return opened[0]
        db = ViewDB(settings)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()
