"""Authenticating a request costs no event-store read while the answer is remembered;
a revocation reaches it at once here and within the TTL on other replicas."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from api.auth import Authenticator, bearer
from domain.app_identity import Identity
from domain.identity import Caller


class Counting(Identity):
    asked = 0

    def authenticate(self, token: str, now: float) -> Caller | None:
        self.asked += 1
        return super().authenticate(token, now)


def network() -> Counting:
    return Counting(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


async def test_a_token_is_looked_up_once_per_ttl() -> None:
    app = network()
    issued = app.sign_up("cache@test.example", "cache password", ["client"], time.time(), 60)
    auth = Authenticator(app, ttl_s=0.3)
    callers = await asyncio.gather(*(auth.authenticate(issued.token) for _ in range(20)))
    assert {c.email for c in callers if c} == {"cache@test.example"}
    assert app.asked == 1  # twenty at once: one lookup
    await auth.authenticate(issued.token)
    assert app.asked == 1
    await asyncio.sleep(0.35)
    await auth.authenticate(issued.token)
    assert app.asked == 2  # remembered no longer than the TTL


async def test_revocation_is_seen_at_once_after_forget_and_by_others_after_the_ttl() -> None:
    app = network()
    issued = app.sign_up("revoke@test.example", "cache password", ["client"], time.time(), 60)
    key = app.create_api_key(issued.user.id, "k", ["client"], ["client"], time.time())
    here, elsewhere = Authenticator(app, ttl_s=0.3), Authenticator(app, ttl_s=0.3)
    assert await here.authenticate(key.key) is not None
    assert await elsewhere.authenticate(key.key) is not None
    app.revoke_api_key(issued.user.id, key.view.id, time.time())
    here.forget(credential_id=key.view.id)
    assert await here.authenticate(key.key) is None
    assert await elsewhere.authenticate(key.key) is not None  # another replica, for now
    await asyncio.sleep(0.35)
    assert await elsewhere.authenticate(key.key) is None


async def test_unknown_and_malformed_tokens_name_no_one() -> None:
    auth = Authenticator(network(), ttl_s=5)
    for token in (None, "", "gps_nothing", "gpk_nothing", "something-else"):
        assert await auth.authenticate(token) is None
    cases: list[tuple[Any, str | None]] = [
        (None, None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None),
        ("Bearer", None), ("Bearer ", None),
    ]
    assert [bearer(header) for header, _ in cases] == [want for _, want in cases]
