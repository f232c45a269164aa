"""A job's env sealed for its JobSubmitted event (infra/job_env.py): it opens with the control
plane's key for its own job only, unchanged and naming the variables its spec names; a job
recorded with no sealed env (before envs were sealed, or a canary) has its spec's env."""

from __future__ import annotations

import secrets

import pytest

from infra.job_env import open_env, seal_env
from infra.row_cipher import RowCipher, RowSealError

NEW, OLD = secrets.token_bytes(32), secrets.token_bytes(32)
SECRET = f"tok-secret-{secrets.token_hex(8)}"
ENV = {"API_TOKEN": SECRET, "MODE": "fast"}
NAMES = {"API_TOKEN": "", "MODE": ""}


def test_a_sealed_env_holds_no_value_and_opens_for_its_job() -> None:
    cipher = RowCipher([NEW])
    sealed = seal_env(cipher, "job-1", ENV)
    assert SECRET not in sealed and "fast" not in sealed and "API_TOKEN" not in sealed
    assert sealed.startswith("s1.")
    assert open_env(cipher, "job-1", NAMES, sealed) == ENV


def test_no_env_seals_to_nothing() -> None:
    assert seal_env(RowCipher([NEW]), "job-1", {}) == ""
    assert open_env(RowCipher([NEW]), "job-1", {}, "") == {}


def test_an_env_recorded_in_the_clear_is_read_as_it_is() -> None:
    """An event from before envs were sealed, or a canary's: no sealed env, its spec's env."""
    assert open_env(RowCipher([NEW]), "job-old", ENV, "") == ENV


def test_another_jobs_env_a_changed_one_or_one_under_an_unlisted_key_does_not_open() -> None:
    cipher = RowCipher([NEW])
    sealed = seal_env(cipher, "job-1", ENV)
    with pytest.raises(RowSealError, match=r"jobs\.env of 'job-2'"):
        open_env(cipher, "job-2", NAMES, sealed)  # copied into another job's event
    head, _, body = sealed.rpartition(".")
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    with pytest.raises(RowSealError, match="integrity"):
        open_env(cipher, "job-1", NAMES, f"{head}.{flipped}")
    with pytest.raises(RowSealError, match="not among"):
        open_env(RowCipher([OLD]), "job-1", NAMES, sealed)


def test_a_sealed_env_naming_other_variables_than_the_spec_is_refused() -> None:
    cipher = RowCipher([NEW])
    sealed = seal_env(cipher, "job-1", ENV)
    with pytest.raises(RowSealError, match="names other variables"):
        open_env(cipher, "job-1", {"API_TOKEN": ""}, sealed)


def test_an_env_sealed_under_the_previous_key_opens_after_rotation() -> None:
    sealed = seal_env(RowCipher([OLD]), "job-1", ENV)
    assert open_env(RowCipher([NEW, OLD]), "job-1", NAMES, sealed) == ENV
