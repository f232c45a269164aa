"""Password hashes (domain/identity.py Passwords): argon2id at the cost the operator names
(GPGPU_PASSWORD_HASH_TIME_COST / _MEMORY_KIB, infra/settings.py), bounded where it enters;
a hash made at another cost verifies and is made again at the next sign-in."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from domain.app_identity import Identity
from domain.identity import IdentityError, Passwords
from infra.settings import Settings


def test_the_default_is_rfc_9106s_second_profile() -> None:
    made = Passwords().hash("correct horse")
    assert made.startswith("$argon2id$") and "m=65536,t=3," in made


def test_the_settings_choose_the_cost_and_the_identity_app_uses_it() -> None:
    settings = Settings(event_store="memory", password_hash_time_cost=2,
                        password_hash_memory_kib=4096)
    identity = Identity(env=settings.eventsourcing_env())
    issued = identity.sign_up("ada@example.test", "correct horse", ["client"], 0.0, 60.0)
    assert issued.token
    user = identity.user_by_email("ada@example.test")
    assert user is not None and "m=4096,t=2," in user.password_hash


@pytest.mark.parametrize(("field", "value"), [
    ("password_hash_time_cost", 0), ("password_hash_time_cost", 11),
    ("password_hash_memory_kib", 1023), ("password_hash_memory_kib", (1 << 20) + 1),
])
def test_a_cost_out_of_bounds_is_refused_naming_the_setting(field: str, value: int) -> None:
    values: dict[str, Any] = {"event_store": "memory", field: value}
    with pytest.raises(ValidationError, match=field):
        Settings(**values)


@pytest.mark.parametrize(("env", "field"), [
    ({"ARGON2_TIME_COST": "0"}, "time_cost"),
    ({"ARGON2_MEMORY_KIB": "512"}, "memory_kib"),
    ({"ARGON2_TIME_COST": "three"}, "argon2_time_cost"),
])
def test_the_domain_bounds_the_cost_too(env: dict[str, str], field: str) -> None:
    with pytest.raises(IdentityError, match=field):
        Passwords.from_env(env)


def test_a_hash_of_another_cost_verifies_and_is_made_again_at_sign_in() -> None:
    cheap = Settings(event_store="memory", password_hash_time_cost=1,
                     password_hash_memory_kib=1024)
    old = Identity(env=cheap.eventsourcing_env())
    old.sign_up("bob@example.test", "correct horse", ["client"], 0.0, 60.0)
    # The operator raises the cost; the same store, read by an app at the new cost.
    dearer = Identity(env={**cheap.eventsourcing_env(), "ARGON2_TIME_COST": "2"},
                      recorder=old.recorder)
    assert not dearer.passwords.matches(None, "correct horse")  # an unknown email
    dearer.sign_in("bob@example.test", "correct horse", 1.0, 60.0)
    user = dearer.user_by_email("bob@example.test")
    assert user is not None and "m=1024,t=2," in user.password_hash
    with pytest.raises(IdentityError, match="password"):
        dearer.sign_in("bob@example.test", "wrong horse", 2.0, 60.0)
