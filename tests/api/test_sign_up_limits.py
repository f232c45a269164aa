"""Sign-up is public and each one hashes a password (argon2id, 64 MiB): one source address
may open only so many accounts an hour, counted where every API process sees it, and
hashing runs a few at a time so that a burst of sign-ups does not starve the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.errors import Refusal
from api.hashing import PasswordSlots
from infra.settings import Settings
from ops.launch import free_port
from tests.support.api_server import running_api
from tests.support.graphql import SIGN_UP

pytestmark = pytest.mark.e2e

PER_ADDRESS = 3


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[str]:
    port = free_port()
    settings = Settings(
        home=Path(tmp_path_factory.mktemp("sign-ups")), temporal_address=temporal_server,
        event_store="memory", api_port=port, api_url=f"http://127.0.0.1:{port}",
        sign_ups_per_address=PER_ADDRESS,
    )
    with running_api(settings):
        yield settings.api_url


@pytest.fixture(scope="module")
def fresh_api_url(tmp_path_factory: pytest.TempPathFactory, temporal_server: str
                  ) -> Iterator[str]:
    """Another API with a count of its own (the tests above use up the first one's)."""
    port = free_port()
    settings = Settings(
        home=Path(tmp_path_factory.mktemp("sign-ups-fresh")),
        temporal_address=temporal_server, event_store="memory", api_port=port,
        api_url=f"http://127.0.0.1:{port}", sign_ups_per_address=PER_ADDRESS,
    )
    with running_api(settings):
        yield settings.api_url


def sign_up(http: httpx.Client, email: str) -> dict[str, object]:
    r = http.post("/graphql", json={"query": SIGN_UP, "variables": {
        "e": email, "p": "a good password", "r": ["client"]}})
    assert r.status_code == 200, r.text
    return dict(r.json()["data"]["signUp"])


def test_the_defaults() -> None:  # the test suite's own environment sets a high limit
    fields = Settings.model_fields
    assert fields["sign_ups_per_address"].default == 20  # people behind one NAT too
    assert fields["password_hash_concurrency"].default == 2
    assert fields["password_hash_wait_s"].default == 5.0


def test_sign_ups_from_one_address_are_throttled_with_when_to_try_again(api_url: str) -> None:
    with httpx.Client(base_url=api_url, timeout=30) as http:
        made = [sign_up(http, f"many-{n}@test.example") for n in range(PER_ADDRESS)]
        assert all(m["__typename"] == "Session" for m in made), made
        refused = sign_up(http, "one-more@test.example")
        assert refused["__typename"] == "FieldError", refused
        message = str(refused["message"])
        assert message.startswith(f"{PER_ADDRESS} accounts signed up from your address in "
                                  "the last 1 h; try again in "), message
        wait = int(message.rsplit(" ", 2)[-2])
        assert 3500 < wait <= 3600, message
        # Nothing was made: the refused account cannot sign in.
        r = http.post("/graphql", json={"query": 'mutation { signIn(email: '
                      '"one-more@test.example", password: "a good password") '
                      '{ __typename } }'})
        assert r.json()["data"]["signIn"]["__typename"] == "FieldError", r.text


def test_password_hashing_runs_a_few_at_a_time_and_a_long_wait_is_refused() -> None:
    async def scenario() -> tuple[int, list[str]]:
        slots = PasswordSlots(slots=2, wait_s=0.5)
        most, outcomes = 0, []

        async def hash_one() -> None:
            nonlocal most
            try:
                async with slots:
                    most = max(most, slots.running)
                    await asyncio.to_thread(time.sleep, 0.2)
                outcomes.append("hashed")
            except Refusal as refused:
                outcomes.append(str(refused))

        await asyncio.gather(*(hash_one() for _ in range(8)))
        return most, outcomes

    most, outcomes = asyncio.run(scenario())
    assert most == 2
    # 0.5 s of waiting lets two rounds of two (0.2 s each) through, the rest are told.
    assert 4 <= outcomes.count("hashed") <= 6, outcomes
    assert {o for o in outcomes if o != "hashed"} == {
        "busy: too many passwords are being checked right now; try again in 1 s"}, outcomes


def test_refused_sign_ups_do_not_count(fresh_api_url: str) -> None:
    """Only accounts made count: twenty refused tries (a malformed email, one already
    registered) from an address shared by many (a NAT, a campus) lock no one out, and
    none of them hashed a password."""
    with httpx.Client(base_url=fresh_api_url, timeout=30) as http:
        assert sign_up(http, "taken@test.example")["__typename"] == "Session"
        for n in range(10):
            bad = sign_up(http, f"not-an-email-{n}")
            taken = sign_up(http, "taken@test.example")
            assert bad["__typename"] == taken["__typename"] == "FieldError", (bad, taken)
            assert taken["message"] == "already registered", taken
        made = [sign_up(http, f"late-{n}@test.example") for n in range(PER_ADDRESS - 1)]
        assert all(m["__typename"] == "Session" for m in made), made
        assert sign_up(http, "one-too-many@test.example")["__typename"] == "FieldError"
