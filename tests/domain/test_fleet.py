"""The API's copies of a node's fleet (domain/fleet.py): what it says of a spec is as
current as the store, whoever wrote it, and a read of the fleet loads only the providers
that changed since the last one, not every provider each time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.application import Network
from domain.fleet import FleetCopies
from domain.node import DEFAULT_NODE
from infra.settings import Settings
from tests.domain.support import PRICE, gpu, make_spec
from tests.support.stores import store_settings

H100 = {"resources": {"gpus": 1, "gpu_model": "H100"}}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with store_settings(request.param, tmp_path) as s:
        yield s


def counting_loads(app: Network, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loaded: list[str] = []
    load = app.provider

    def provider(provider_id: str) -> Any:
        loaded.append(provider_id)
        return load(provider_id)

    monkeypatch.setattr(app, "provider", provider)
    return loaded


def test_what_another_process_registered_or_changed_is_seen_at_once(store: Settings) -> None:
    api, other = (Network(env=store.eventsourcing_env()) for _ in range(2))
    other.register_provider("t4", "eu", PRICE, [gpu(0, "Tesla T4", 15_360)])
    assert "H100" in (api.unsatisfiable(make_spec(**H100)) or "")
    other.register_provider("h100", "eu", PRICE, [gpu(0)])  # stored by the other one
    assert api.unsatisfiable(make_spec(**H100)) is None
    other.set_price("h100", 5 * PRICE)
    [h100] = [a for a in api.explain(make_spec(**H100), {"h100", "t4"})
              if a.provider_id == "h100"]
    assert "price" in (h100.reason or "")


def test_a_read_of_the_fleet_loads_only_the_providers_that_changed(
        store: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    api = Network(env=store.eventsourcing_env())
    for i in range(20):
        api.register_provider(f"p{i}", "eu", PRICE, [gpu(0)])
    loaded = counting_loads(api, monkeypatch)
    assert api.unsatisfiable(make_spec(**H100)) is None
    assert sorted(loaded) == sorted(f"p{i}" for i in range(20))  # the first read: each once
    loaded.clear()
    for _ in range(5):
        assert api.unsatisfiable(make_spec(**H100)) is None
    assert loaded == []
    api.set_price("p7", 2 * PRICE)
    loaded.clear()  # the command's own load
    api.explain_gpus(make_spec(**H100), set())
    assert loaded == ["p7"]


def test_a_fleet_far_behind_the_log_loads_again_rather_than_read_it_all(
        store: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    api = Network(env=store.eventsourcing_env())
    api.register_provider("p1", "eu", PRICE, [gpu(0)])
    fleet = FleetCopies(api, catch_up=3)
    node, [first] = fleet.of_node(DEFAULT_NODE, set())
    for n in range(5):
        api.set_price("p1", PRICE + n)
    selects = 0
    select = api.recorder.select_notifications

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal selects
        selects += 1
        return select(*args, **kwargs)

    monkeypatch.setattr(api.recorder, "select_notifications", counted)
    _, [now] = fleet.of_node(DEFAULT_NODE, set())
    assert selects == 0  # dropped its copies instead of reading the notifications
    assert (first.price_per_gpu_hour_micro, now.price_per_gpu_hour_micro) == (
        PRICE, PRICE + 4)
    assert node.node_id == DEFAULT_NODE


def test_the_default_node_before_anyone_joined_is_not_kept(store: Settings) -> None:
    api, other = (Network(env=store.eventsourcing_env()) for _ in range(2))
    assert "no provider has joined" in (api.unsatisfiable(make_spec(**H100)) or "")
    other.register_provider("h100", "eu", PRICE, [gpu(0)])
    assert api.unsatisfiable(make_spec(**H100)) is None
