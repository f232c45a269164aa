"""A job's env at rest, on every store: the event store holds it sealed (infra/job_env.py) and
the views hold its names alone; the control plane's key opens it; an env is never recorded
in the clear, not even by a caller that forgot to seal it."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from domain.application import Network
from infra.job_env import open_env, seal_env
from infra.row_cipher import RowCipher
from infra.settings import Settings
from readmodel.projector import Projector
from tests.domain.support import START, job_event_types, make_spec
from tests.domain.test_projection import OpenViews, job_row, snapshot


def stored_states(app: Network) -> bytes:
    """Every event as the store keeps it (the state column, read back from the database)."""
    return b"\n".join(n.state for n in app.recorder.select_notifications(start=1, limit=10_000))


def database_files(settings: Settings) -> bytes:
    """The SQLite files themselves, write-ahead logs included (other stores: nothing)."""
    if settings.event_store != "sqlite":
        return b""
    files = [p for base in (settings.events_path, settings.views_path)
             for p in base.parent.glob(f"{base.name}*")]
    assert files
    return b"".join(Path(p).read_bytes() for p in files)


def test_a_jobs_env_is_sealed_in_the_event_store_and_named_alone_in_the_views(
    app: Network, settings: Settings, open_views: OpenViews
) -> None:
    secret = f"tok-secret-{secrets.token_hex(16)}"
    cipher = RowCipher(settings.payload_keys)
    spec = make_spec(env={"API_TOKEN": secret, "MODE": "fast"})
    app.open_client("alice", START)
    app.submit_job("job-env", "alice", spec, seal_env(cipher, "job-env", spec.env))
    app.admit_job("job-env")
    views = open_views()
    Projector(app, views).catch_up()

    stored = stored_states(app)
    assert b"API_TOKEN" in stored and b"python train.py" in stored  # the spec is readable
    assert secret.encode() not in stored and b"fast" not in stored
    job = app.job("job-env")
    assert job.spec["env"] == {"API_TOKEN": "", "MODE": ""}
    assert open_env(cipher, "job-env", job.spec["env"], job.sealed_env) == spec.env

    assert json.loads(job_row(views, "job-env")["spec"])["env"] == {"API_TOKEN": "", "MODE": ""}
    # The views' tables (with PostgreSQL the event store's table shares their schema).
    events_table = getattr(app.recorder, "events_table_name", "")
    shown = repr([rows for table, rows in snapshot(views).items()
                  if table not in (events_table, events_table.rpartition(".")[2])])
    assert "API_TOKEN" in shown and secret not in shown and job.sealed_env not in shown
    assert secret.encode() not in database_files(settings)


def test_an_env_the_caller_did_not_seal_is_refused_and_nothing_is_recorded(app: Network) -> None:
    spec = make_spec(env={"API_TOKEN": "tok-in-the-clear"})
    with pytest.raises(ValueError, match="sealed"):
        app.submit_job("job-clear", "alice", spec)
    assert job_event_types(app, "job-clear") == []
    assert b"tok-in-the-clear" not in stored_states(app)


def test_a_job_without_env_records_no_sealed_env(app: Network) -> None:
    app.submit_job("job-plain", "alice", make_spec(), "s1.unused")
    job = app.job("job-plain")
    assert job.sealed_env == "" and job.spec["env"] == {}
