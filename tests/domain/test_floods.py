"""What one free account can make the network carry: provider ids it may claim (counted on
the account's own aggregate, so every process agrees, even two at once), and what its
balance could put in escrow for a new job, read without recording anything."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from domain.app_identity import Identity
from domain.application import Network
from domain.identity import IdentityError
from infra.settings import Settings


def identity(settings: Settings, most: int) -> Identity:
    return Identity(env={**settings.eventsourcing_env(), "PROVIDERS_PER_ACCOUNT_MOST": str(most)})


def test_an_account_claims_at_most_its_providers_and_keeps_reclaiming_its_own(
    settings: Settings,
) -> None:
    app = identity(settings, 3)
    owner = str(app.create_user("fleet@test.example", "a long password", ["provider"], 0.0).id)
    for n in range(3):
        app.claim("provider", f"p-{n}", owner)
    with pytest.raises(IdentityError, match="at most 3 providers and this one owns 3") as err:
        app.claim("provider", "p-3", owner)
    assert err.value.field == "provider_id"
    assert app.owner_of("provider", "p-3") is None
    app.claim("provider", "p-0", owner)  # an id it owns is no new one
    app.claim("node", "its-node", owner)  # nodes are not providers
    user = app.user(owner)
    assert user is not None and user.provider_ids == ["p-0", "p-1", "p-2"]
    # Another account has a cap of its own.
    other = str(app.create_user("other@test.example", "a long password", ["provider"], 0.0).id)
    app.claim("provider", "p-3", other)


def test_the_cap_holds_across_processes_claiming_at_once(settings: Settings) -> None:
    if settings.event_store == "memory":
        pytest.skip("two processes share a store on disk, not in memory")
    first = identity(settings, 2)
    owner = str(first.create_user("race@test.example", "a long password", ["provider"], 0.0).id)
    apps = [first, *(identity(settings, 2) for _ in range(3))]
    refused: list[str] = []
    start = threading.Barrier(len(apps))

    def claim(app: Identity, n: int) -> None:
        start.wait()
        try:
            app.claim("provider", f"r-{n}", owner)
        except IdentityError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=claim, args=(a, n)) for n, a in enumerate(apps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    user = identity(settings, 2).user(owner)
    assert user is not None and len(user.provider_ids) == 2, user.provider_ids
    assert len(refused) == 2, refused


@pytest.mark.parametrize(("raw", "why"), [("0", "between 1 and 10000"),
                                          ("many", "not a whole number")])
def test_the_domain_bounds_the_cap_too(raw: str, why: str) -> None:
    with pytest.raises(IdentityError, match=why):
        Identity(env={"PERSISTENCE_MODULE": "eventsourcing.popo",
                      "PROVIDERS_PER_ACCOUNT_MOST": raw})


def test_the_settings_pass_the_cap_on() -> None:
    settings = Settings(event_store="memory", max_providers_per_account=7)
    assert Identity(env=settings.eventsourcing_env()).providers_per_account == 7
    assert Identity(env=Settings(event_store="memory").eventsourcing_env()
                    ).providers_per_account == 64


def test_what_a_client_could_hold_in_escrow(open_app: Callable[[], Network]) -> None:
    app = open_app()
    before = app.recorder.max_notification_id()
    # Not opened yet: what opening it would deposit, and nothing is recorded.
    assert app.available_micro("new", 0) == 0
    assert app.available_micro("new", 5_000) == 5_000
    assert app.recorder.max_notification_id() == before
    app.open_client("new", 5_000)
    app.grant("new", 1_000, "g-1", "a grant")
    assert app.available_micro("new", 5_000) == 6_000  # welcomed once, not again
    # Opened with none, then the operator raised the starting balance: opening again
    # would deposit it, so it counts.
    app.open_client("poor", 0)
    assert app.available_micro("poor", 0) == 0
    assert app.available_micro("poor", 2_000) == 2_000
