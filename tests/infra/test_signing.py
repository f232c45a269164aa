"""The signing key is private, and grants are refused unless the network signed them, in force."""

from __future__ import annotations

import hashlib
import hmac
import stat
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from infra.settings import Settings
from infra.signing import (
    Grant,
    GrantRefused,
    SigningKeyError,
    check,
    grant_url,
    load_or_create_key,
    parse_grant,
    sign,
)

GRANT = Grant("GET", "alice", "a.txt", 0, "job-1", 1, "prov-1", 4, "blake3:" + "ab" * 32)


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
                    {"size": 5}, {"digest": "blake3:" + "cd" * 32}, {"method": "PUT"},
                    {"once": True}, {"digest": "sha256:" + "ab" * 32}, {"digest": ""}):
        moved = Grant(**{**grant.__dict__, **changed})
        with pytest.raises(GrantRefused, match="signature"):
            check(key, moved, sign(key, grant), now, 900)
    year_3000 = Grant(**{**GRANT.__dict__, "expires": 32503680000})
    with pytest.raises(GrantRefused, match="maximum of 900 s"):
        check(key, year_3000, sign(key, year_3000), now, 900)
    with pytest.raises(GrantRefused, match="expired"):
        check(key, grant, sign(key, grant), now + 61, 900)


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_a_grant_carries_its_digest_as_written_and_reads_back_the_same() -> None:
    key, now = b"k" * 32, int(time.time())
    grant = Grant(**{**GRANT.__dict__, "expires": now + 60})
    params = query_of(grant_url(key, "http://api", grant))
    assert params["digest"] == "blake3:" + "ab" * 32 and "sha256" not in params
    sig = params.pop("sig")
    assert parse_grant("GET", "alice", "a.txt", params) == grant
    check(key, grant, sig, now, 900)
    for bad, why in (({"digest": "blake3:" + "AB" * 32}, "'digest' is not"),
                     ({"digest": "md5:" + "ab" * 16}, "'digest' is not"),
                     ({"sha256": "ab" * 32}, "both a 'digest' and a 'sha256'")):
        with pytest.raises(GrantRefused, match=why):
            parse_grant("GET", "alice", "a.txt", {**params, **bad})


def test_a_grant_made_before_blake3_still_checks_as_a_sha256_one() -> None:
    """Its URL names a bare `sha256`, and its signature is over the message as it was then
    (written out here, not made with today's code): it reads as digest "sha256:<hex>"."""
    key, now = b"k" * 32, int(time.time())
    hexpart = "ab" * 32
    old_message = "\n".join(["g2", "GET", "alice", "a.txt", str(now + 60), "job-1", "1", "prov-1",
                             "4", hexpart, ""]).encode()
    old_sig = hmac.new(key, old_message, hashlib.sha256).hexdigest()
    params = {"expires": str(now + 60), "job": "job-1", "attempt": "1", "provider": "prov-1",
              "size": "4", "sha256": hexpart}
    grant = parse_grant("GET", "alice", "a.txt", params)
    assert grant.digest == f"sha256:{hexpart}"
    check(key, grant, old_sig, now, 900)
    with pytest.raises(GrantRefused, match="'sha256' is not 64 lowercase hex"):
        parse_grant("GET", "alice", "a.txt", {**params, "sha256": "AB" * 32})
    # "blake3:<hex>" never signs as the bare hex: no grant of one reads as the other.
    as_blake3 = Grant(**{**grant.__dict__, "digest": f"blake3:{hexpart}"})
    with pytest.raises(GrantRefused, match="signature"):
        check(key, as_blake3, old_sig, now, 900)


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
