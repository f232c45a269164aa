"""Changing and resetting a password ends the account's other sessions; guessing one is
throttled per email."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.auth import SignInThrottle
from api.errors import Refusal, refusal_text
from domain.app_identity import Identity
from domain.identity import IdentityError
from infra.settings import Settings
from readmodel.schema import ViewDB
from tests.support.stores import store_settings


def network() -> Identity:
    return Identity(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def test_a_changed_password_ends_the_other_sessions_and_keeps_the_new_one() -> None:
    app = network()
    first = app.sign_up("pw@test.example", "old password", ["client"], time.time(), 60)
    second = app.sign_in("pw@test.example", "old password", time.time(), 60)
    key = app.create_api_key(first.user.id, "ci", ["client"], ["client"], time.time())

    changed = app.change_password(first.user.id, "old password", "new password 2",
                                  time.time(), 60)

    assert app.authenticate(first.token, time.time()) is None
    assert app.authenticate(second.token, time.time()) is None
    assert app.authenticate(changed.token, time.time()) is not None
    assert app.authenticate(key.key, time.time()) is not None  # keys are revoked one by one
    with pytest.raises(IdentityError, match=r"^password: the email and password do not"):
        app.sign_in("pw@test.example", "old password", time.time(), 60)
    assert app.sign_in("pw@test.example", "new password 2", time.time(), 60).token


def test_a_change_needs_the_current_password_and_a_good_new_one() -> None:
    app = network()
    user = app.sign_up("pw2@test.example", "old password", ["client"], time.time(), 60).user
    with pytest.raises(IdentityError, match=r"^current_password: does not match") as wrong:
        app.change_password(user.id, "guess", "new password 2", time.time(), 60)
    # The API names it by its GraphQL argument, from the error's field (no text parsed).
    assert (wrong.value.field, wrong.value.reason) == (
        "current_password", "does not match the account's password")
    assert refusal_text(wrong.value) == "currentPassword: does not match the account's password"
    with pytest.raises(IdentityError, match=r"^new_password: at least") as short:
        app.change_password(user.id, "old password", "short", time.time(), 60)
    assert refusal_text(short.value).startswith("newPassword: at least")
    assert app.sign_in("pw2@test.example", "old password", time.time(), 60).token


def test_a_reset_hands_out_a_temporary_password_and_ends_every_session() -> None:
    app = network()
    issued = app.sign_up("lost@test.example", "forgotten pw", ["client"], time.time(), 60)

    temporary = app.reset_password("Lost@Test.example", time.time())

    assert app.authenticate(issued.token, time.time()) is None
    assert app.sign_in("lost@test.example", temporary, time.time(), 60).token
    with pytest.raises(IdentityError, match=r"^email: no account has 'nobody@test.example'"):
        app.reset_password("nobody@test.example", time.time())


@pytest.fixture(params=("sqlite", "postgres"))
def views_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    with store_settings(request.param, tmp_path) as settings:
        yield settings


def test_wrong_passwords_lock_the_email_for_the_window_then_let_it_go(
    views_settings: Settings,
) -> None:
    now = [1000.0]
    db = ViewDB(views_settings)
    throttle = SignInThrottle(db, max_failures=3, window_s=60, clock=lambda: now[0])
    try:
        for _ in range(3):
            throttle.check("Eve@test.example")
            throttle.failed("eve@test.example")
        with pytest.raises(Refusal, match=r"^password: 3 wrong passwords .* try again in 60 s"):
            throttle.check("eve@test.example")
        throttle.check("someone-else@test.example")  # per email
        now[0] += 30
        with pytest.raises(Refusal, match="try again in 30 s"):
            throttle.check("EVE@test.example")
        now[0] += 31
        throttle.check("eve@test.example")  # the failures left the window
        throttle.failed("mallory@test.example")  # and a later failure takes them away
        assert db.query("SELECT DISTINCT email FROM sign_in_failures") == [
            {"email": "mallory@test.example"}
        ]
    finally:
        db.close()


def test_every_api_process_counts_the_same_guesses(views_settings: Settings) -> None:
    """Two API replicas on one database: what one counts locks the email on the other,
    and a success on either clears it for both."""
    first, second = ViewDB(views_settings), ViewDB(views_settings)
    one, other = SignInThrottle(first, max_failures=2), SignInThrottle(second, max_failures=2)
    try:
        one.failed("ann@test.example")
        other.failed("ann@test.example")
        for throttle in (one, other):
            with pytest.raises(Refusal, match=r"^password: 2 wrong passwords"):
                throttle.check("ann@test.example")
        other.succeeded("ann@test.example")
        one.check("ann@test.example")
    finally:
        first.close()
        second.close()


def test_broken_unicode_is_refused_by_field() -> None:
    app = network()
    with pytest.raises(IdentityError, match=r"^email: is not valid Unicode"):
        app.sign_up("\ud800@test.example", "a password 1", ["client"], time.time(), 60)
    with pytest.raises(IdentityError, match=r"^password: is not valid Unicode"):
        app.sign_up("u@test.example", "a password \udfff", ["client"], time.time(), 60)
    user = app.sign_up("u@test.example", "a password 1", ["client"], time.time(), 60).user
    with pytest.raises(IdentityError, match=r"^password: the email and password do not"):
        app.sign_in("u@test.example", "\ud800 password", time.time(), 60)
    nul = r"^name: must not contain a NUL character \(one is at character 2\)"
    with pytest.raises(IdentityError, match=nul):
        app.create_api_key(user.id, "ci\x00", ["client"], ["client"], time.time())
