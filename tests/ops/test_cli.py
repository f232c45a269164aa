"""The operator's commands mounted on `gpgpu` (ops/cli.py): up, admin, provider start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ops import cli

runner = CliRunner(env={"COLUMNS": "200"})


def test_up_runs_the_dev_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    from ops import devstack

    started: list[str] = []

    def devstack_main() -> None:
        started.append("up")

    monkeypatch.setattr(devstack, "main", devstack_main)

    result = runner.invoke(cli.app, ["up"])

    assert (result.exit_code, started) == (0, ["up"])


def test_admin_reset_password_prints_a_temporary_one_that_signs_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from domain.app_identity import Identity
    from infra.settings import Settings

    monkeypatch.setenv("GPGPU_HOME", str(tmp_path))
    made = runner.invoke(cli.app, ["admin", "create-admin", "boss@b.test", "--password-stdin"],
                         input="the boss's password\n")
    assert made.exit_code == 0, made.output
    unknown = runner.invoke(cli.app, ["admin", "reset-password", "nobody@b.test"])
    assert unknown.exit_code == 2
    assert "email: no account has 'nobody@b.test'" in unknown.stderr

    only = runner.invoke(cli.app, ["admin", "revoke-role", "boss@b.test", "admin"])
    assert only.exit_code == 0, only.output
    assert only.stdout == "boss@b.test: client, provider, operator\n"
    unknown_role = runner.invoke(cli.app, ["admin", "revoke-role", "boss@b.test", "king"])
    assert unknown_role.exit_code == 2
    assert "role: 'king' is not one of client, provider, operator, admin" in unknown_role.stderr

    reset = runner.invoke(cli.app, ["admin", "reset-password", "boss@b.test"])

    assert reset.exit_code == 0, reset.output
    temporary = reset.stdout.strip()
    assert temporary.startswith("tmp-") and "gpgpu passwd" in reset.stderr
    identity = Identity(env=Settings().eventsourcing_env())
    assert identity.sign_in("boss@b.test", temporary, time.time(), 60).token


def test_provider_start_runs_the_agent_with_every_argument(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker_gpu.__main__ as agent

    seen: list[list[str]] = []
    monkeypatch.setattr(agent, "main", lambda argv: seen.append(argv))
    monkeypatch.setenv("GPGPU_API_URL", "http://elsewhere")  # restored afterwards
    args = ["--provider-id", "p1", "--simulate", "2xH100:80", "--price", "2.5", "--help"]
    result = runner.invoke(cli.app, ["--api", "http://api.test:9", "provider", "start", *args])
    assert result.exit_code == 0, result.output
    assert seen == [args]
    assert os.environ["GPGPU_API_URL"] == "http://api.test:9"  # the agent's settings read it
