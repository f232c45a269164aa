"""`gpgpu up` is a supervisor: kill -9 of any child is followed by a restart, and the network
still runs a job to SUCCEEDED.

`python -m ops.devstack` (what `gpgpu up` runs) as a real subprocess, with its own
GPGPU_HOME, free ports and its own config folder (the credentials `gpgpu up` saves); each
of its children (both providers, the control worker, the API) is killed with SIGKILL in
turn; each must come back as a new process, with a line saying so, while `gpgpu up`
itself keeps running. Then a job runs to SUCCEEDED on the restarted network, and Ctrl-C
stops it all with exit code 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ops.devstack import DEV_CREDITS_MICRO, ROOT
from ops.launch import free_port
from tests.support.graphql import SUBMIT

pytestmark = pytest.mark.e2e

# How each child of `gpgpu up` is recognised among its processes, by its command line.
CHILDREN = {
    "provider-a": "--provider-id\0provider-a",
    "control-worker": "-m\0activities.worker",
    "api": "-m\0api\0",
    "provider-b": "--provider-id\0provider-b",
}


def children_of(pid: int) -> dict[str, int]:
    """The named children of process `pid`: name -> pid (read from /proc)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != pid:
            continue
        for name, mark in CHILDREN.items():
            if mark in cmdline + "\0":
                found[name] = int(entry.name)
    return found


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    home: Path
    url: str
    console: Path

    def output(self) -> str:
        return self.console.read_text(errors="replace")

    def wait_for(self, words: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if words in self.output():
                return
            assert self.proc.poll() is None, f"gpgpu up exited:\n{self.output()}"
            time.sleep(0.3)
        raise AssertionError(f"no {words!r} within {timeout_s} s:\n{self.output()}")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    api_port = free_port()
    env = {
        **os.environ,
        "GPGPU_HOME": str(tmp_path / "home"),
        "GPGPU_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "GPGPU_TEMPORAL_UI_PORT": str(free_port()),
        "GPGPU_API_PORT": str(api_port),
        "GPGPU_API_URL": f"http://127.0.0.1:{api_port}",
        "GPGPU_PROVIDER_HEARTBEAT_INTERVAL_S": "1",
        "GPGPU_ADAPTIVE_CHECKS": "false",
        "GPGPU_CANARIES": "false",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    env.pop("GPGPU_API_KEY", None)
    console = tmp_path / "console.txt"
    with console.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ops.devstack"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Up(proc, tmp_path / "home", env["GPGPU_API_URL"], console)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_every_child_killed_is_restarted_and_a_job_still_succeeds(up: Up) -> None:
    up.wait_for("the network is up", 180)
    before = children_of(up.proc.pid)
    assert set(before) == set(CHILDREN), before
    for name in CHILDREN:
        os.kill(before[name], signal.SIGKILL)
        up.wait_for(f"{name} exited with code -9; starting it again", 15)
        up.wait_for(f"{name} started again", 15)
        now = children_of(up.proc.pid)
        assert now.get(name) not in (None, before[name]), (name, before, now)
        assert up.proc.poll() is None, up.output()
    assert "stopping the network" not in up.output()

    key = json.loads((up.home / "dev-account.json").read_text())["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=up.url, headers=headers, timeout=30) as http:
        deadline = time.monotonic() + 60
        while True:  # the restarted API answers, and both restarted providers are online
            try:
                body = http.post("/graphql", json={
                    "query": "{ providers { providerId status } }"}).json()
                online = {p["providerId"] for p in body["data"]["providers"]
                          if p["status"] == "online"}
                if {"provider-a", "provider-b"} <= online:
                    break
            except (httpx.HTTPError, KeyError, TypeError):
                pass
            assert time.monotonic() < deadline, f"providers not back online: {up.output()}"
            time.sleep(0.5)
        spec = {"name": "after-kills", "command": "echo survived > out.txt",
                "outputs": ["out.txt"], "max_price_per_gpu_hour": "3", "timeout": 60}
        submitted = http.post("/graphql", json={"query": SUBMIT, "variables": {"s": spec}})
        job_id = submitted.json()["data"]["submitJob"]["job"]["id"]
        deadline = time.monotonic() + 90
        state = None
        while time.monotonic() < deadline and state not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            time.sleep(0.5)
            state = http.post("/graphql", json={
                "query": "query($id: ID!) { job(id: $id) { state reason } }",
                "variables": {"id": job_id}}).json()["data"]["job"]["state"]
        assert state == "SUCCEEDED", (state, up.output())
        # The dev account's credits are a grant recorded in its ledger, not a hidden balance.
        ledger = http.post("/graphql", json={
            "query": "{ ledger(limit: 1000) { transferId amountMicro kind } }"}).json()
        grants = [e for e in ledger["data"]["ledger"]
                  if e["transferId"].startswith("deposit:grant:gpgpu-up:")]
        assert [(g["amountMicro"], g["kind"]) for g in grants] == [(DEV_CREDITS_MICRO,
                                                                    "deposit")], ledger

    last = children_of(up.proc.pid)
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0, up.output()
    assert [pid for pid in last.values() if Path(f"/proc/{pid}").exists()] == [], last


def test_back_off_doubles_to_its_cap_and_starts_over_after_a_stable_run() -> None:
    from ops.supervisor import MAX_BACKOFF_S, STABLE_AFTER_S, next_start

    delays, restarts = [], 0
    for _ in range(8):  # crashing at once, again and again
        due, restarts = next_start(100.0, 99.5, restarts)
        delays.append(due - 100.0)
    assert delays == [1, 2, 4, 8, 16, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    due, restarts = next_start(100.0 + STABLE_AFTER_S, 100.0, restarts)  # ran a minute
    assert (due - 100.0 - STABLE_AFTER_S, restarts) == (1, 1)
