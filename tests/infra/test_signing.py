"""The signing key is private, and grants are refused unless the network signed them, in force."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from infra.settings import Settings
from infra.signing import (
    Grant,
    GrantRefused,
    SigningKeyError,
    check,
    load_or_create_key,
    sign,
)

GRANT = Grant("GET", "alice", "a.txt", 0, "job-1", 1, "prov-1", 4, "ab" * 32)


def test_the_key_is_made_0600_and_an_old_readable_one_is_made_private(tmp_path: Path) -> None:
    made = tmp_path / "home" / "signing.key"
    key = load_or_create_key(made)
    assert len(key) == 32 and stat.S_IMODE(made.stat().st_mode) == 0o600
    assert load_or_create_key(made) == key  # made once
    old = tmp_path / "old.key"
    old.write_text("11" * 32)
    old.chmod(0o644)
    assert load_or_create_key(old) == bytes.fromhex("11" * 32)
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_a_grant_is_in_force_only_when_signed_by_the_key_and_within_the_maximum() -> None:
    key, now = b"k" * 32, time.time()
    grant = Grant(**{**GRANT.__dict__, "expires": int(now) + 60})
    check(key, grant, sign(key, grant), now, 900)
    with pytest.raises(GrantRefused, match="signature"):
        check(key, grant, sign(b"another key", grant), now, 900)
    for changed in ({"key": "b.txt"}, {"attempt": 2}, {"provider_id": "prov-2"},
                    {"size": 5}, {"sha256": "cd" * 32}, {"method": "PUT"}, {"once": True}):
        moved = Grant(**{**grant.__dict__, **changed})
        with pytest.raises(GrantRefused, match="signature"):
            check(key, moved, sign(key, grant), now, 900)
    year_3000 = Grant(**{**GRANT.__dict__, "expires": 32503680000})
    with pytest.raises(GrantRefused, match="maximum of 900 s"):
        check(key, year_3000, sign(key, year_3000), now, 900)
    with pytest.raises(GrantRefused, match="expired"):
        check(key, grant, sign(key, grant), now + 61, 900)


def test_the_signing_key_setting_is_checked_and_production_must_be_given_one(
    tmp_path: Path,
) -> None:
    given = Settings(home=tmp_path, event_store="postgres", signing_key="cd" * 32)
    assert given.signing_secret == bytes.fromhex("cd" * 32)
    assert "cd" * 32 not in repr(given)
    assert not (tmp_path / "signing.key").exists()
    for bad in ("zz" * 32, "cd" * 31, "cd" * 33):
        with pytest.raises(SigningKeyError, match="GPGPU_SIGNING_KEY is not 64 hex digits"):
            Settings(home=tmp_path, signing_key=bad).signing_secret  # noqa: B018
    with pytest.raises(SigningKeyError, match="GPGPU_SIGNING_KEY is not set"):
        Settings(home=tmp_path, event_store="postgres").signing_secret  # noqa: B018
    made = Settings(home=tmp_path).signing_secret  # the embedded network makes its own
    assert (tmp_path / "signing.key").exists() and Settings(home=tmp_path).signing_secret == made
    with pytest.raises(SystemExit, match="GPGPU_SIGNING_KEY is not set"):
        Settings(home=tmp_path, event_store="postgres",
                 temporal_payload_keys="ab" * 32).check_keys()
