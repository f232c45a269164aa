"""Every command that takes --json prints one JSON document on stdout and nothing else."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from client import cli
from client.cli import common
from client.sdk import GpgpuClient
from tests.client.fake_api import CLIENT, job_json
from tests.client.test_provider_cli import ProviderApi

HELLO = Path(__file__).parents[2] / "examples" / "hello" / "job.yaml"
runner = CliRunner(env={"COLUMNS": "200"})

EXPLANATION = {
    "__typename": "Explanation",
    "eligible": [{"providerId": "p1", "gpuIndexes": [0], "pricePerGpuHourMicro": 2_500_000,
                  "quoteMicro": 2_500_000, "reputation": 0.75, "expectedStart": "now"}],
    "rejected": [],
    "gpus": [{"providerId": "p1", "index": 0, "model": "H100", "memoryMb": 81_920,
              "eligible": True, "reason": "", "pricePerGpuHourMicro": 2_500_000, "score": 1.0}],
}


class EveryCallApi(ProviderApi):
    """ProviderApi, plus the answers the account and job commands still need."""

    def _answer(self, name: str, v: dict[str, Any]) -> dict[str, Any] | str | None:
        if name == "Explain":
            return {"explain": EXPLANATION}
        if name == "ApiKeys":
            return {"apiKeys": [{"id": "k-1", "name": "box", "scopes": ["provider"],
                                 "createdAt": "2025-01-02T03:04:05+00:00"}]}
        if name == "CancelJob":
            return {"cancelJob": {"__typename": "Job", **job_json(v["id"], state="CANCELLED")}}
        return super()._answer(name, v)


# Each command that has --json, with the arguments that make it succeed against the fake.
INVOCATIONS: dict[str, list[str]] = {
    "add-role": ["add-role", "provider"],
    "whoami": ["whoami"],
    "account": ["account"],
    "offers": ["offers"],
    "providers": ["providers"],
    "job submit": ["job", "submit", str(HELLO)],
    "job list": ["job", "list"],
    "job show": ["job", "show", "job-1"],
    "job explain": ["job", "explain", str(HELLO)],
    "job cancel": ["job", "cancel", "job-1"],
    "storage ls": ["storage", "ls"],
    "provider status": ["provider", "status", "p1"],
    "provider earnings": ["provider", "earnings", "p1"],
    "provider suspend": ["provider", "suspend", "p1", "1"],
    "provider resume": ["provider", "resume", "p1", "1"],
    "provider price": ["provider", "price", "p1", "3"],
    "node queues": ["node", "queues"],
    "node waiting": ["node", "waiting"],
    "keys create": ["keys", "create", "box"],
    "keys list": ["keys", "list"],
}


def commands_with_json(group: Any, prefix: str = "") -> set[str]:
    """The user commands (client/cli/) that take --json; the operator's, which ops/cli.py
    mounts on the same app when it is imported, need the server's stores."""
    found: set[str] = set()
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group
            found |= commands_with_json(cmd, f"{prefix}{name} ")
        elif (any("--json" in p.opts for p in cmd.params)
              and cmd.callback.__module__.startswith("client.")):
            found.add(prefix + name)
    return found


def test_every_json_command_is_tried_here() -> None:
    assert commands_with_json(typer.main.get_command(cli.app)) == set(INVOCATIONS)


@pytest.fixture
def every_call(monkeypatch: pytest.MonkeyPatch) -> EveryCallApi:
    api = EveryCallApi()
    api.jobs[job_json()["id"]] = job_json()
    api.objects["in.txt"] = b"stored"
    monkeypatch.setattr(common, "GpgpuClient",
                        functools.partial(GpgpuClient, transport=api.transport))
    return api


@pytest.mark.parametrize("command", sorted(INVOCATIONS))
def test_json_is_one_document_on_stdout(every_call: EveryCallApi, command: str) -> None:
    args = ["--api", every_call.url, "--client", CLIENT, *INVOCATIONS[command], "--json"]

    result = runner.invoke(cli.app, args)

    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress, no notes: a program reads stdout alone
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict | list) and doc, doc
