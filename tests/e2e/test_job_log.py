"""A job's live log over the real network: its lines reach a subscriber while it runs, in
order, once each; the stream ends with the job; only the job's owner may follow it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from client.aio import AsyncGpgpuClient
from client.sdk import GpgpuClient
from tests.e2e.network import PROVIDER_OWNER, Network, network

pytestmark = pytest.mark.e2e

SUBMIT = """mutation($s: JSON!) { submitJob(spec: $s) { __typename
  ... on JobSubmitted { job { id } } ... on SpecRejected { errors { field message } } } }"""
LOG = """subscription($id: ID!, $after: Int!) { jobLog(jobId: $id, after: $after) {
  seq attempt providerId text skippedBytes } }"""
# Five lines a second apart, then 15 s more: the job is still running when its first line
# reaches a reader, even with each line late by seconds on a loaded machine (CI saw the job
# end within 5 s of that line).
TICKING = "for i in 1 2 3 4 5; do echo line $i; sleep 1; done; sleep 15"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("joblog"), temporal_server,
                 [("log-a", "1xH100:80", "2.0", [])]) as n:
        yield n


def submit(net: Network, client: str, command: str) -> str:
    body = {"name": "log", "command": command, "max_price_per_gpu_hour": "3", "timeout": 60}
    result = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    return str(result["job"]["id"])


def state(net: Network, job_id: str, client: str) -> str:
    return str(net.gql("query($id: ID!) { job(id: $id) { state } }", client,
                       id=job_id)["job"]["state"])


async def follow(net: Network, client: str, job_id: str, after: int = 0,
                 on_chunk: Any = None) -> tuple[list[dict[str, Any]], str]:
    """Every chunk until the server completes the stream, and how it ended."""
    ws_url = net.url.replace("http://", "ws://") + "/graphql"
    init = {"Authorization": f"Bearer {net.token(client)}"}
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": LOG, "variables": {"id": job_id, "after": after}}}))
        got: list[dict[str, Any]] = []
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if msg["type"] != "next" or msg["payload"].get("errors"):
                return got, json.dumps(msg)
            chunk = msg["payload"]["data"]["jobLog"]
            got.append(chunk)
            if on_chunk is not None:
                await on_chunk(chunk)


async def test_lines_arrive_while_the_job_runs_and_the_stream_ends_with_it(
    net: Network,
) -> None:
    job_id = submit(net, "logger", TICKING)
    seen_running: list[tuple[str, str]] = []

    async def check(chunk: dict[str, Any]) -> None:
        if not seen_running:  # the first line: the job is still running
            now = await asyncio.to_thread(state, net, job_id, "logger")
            seen_running.append((chunk["text"], now))

    started = time.monotonic()
    chunks, end = await follow(net, "logger", job_id, on_chunk=check)
    text = "".join(c["text"] for c in chunks)

    assert '"type": "complete"' in end, end
    assert text == "".join(f"line {i}\n" for i in range(1, 6)), chunks
    assert seen_running[0][0].startswith("line 1") and seen_running[0][1] == "RUNNING"
    assert len(chunks) >= 3, chunks  # the lines came as they were printed, not at the end
    assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert {(c["attempt"], c["providerId"], c["skippedBytes"]) for c in chunks} == {
        (1, "log-a", 0)}
    assert state(net, job_id, "logger") == "SUCCEEDED"
    assert time.monotonic() - started < 60

    # A subscriber that comes back after the end gets what it missed, then the end.
    rest, end = await follow(net, "logger", job_id, after=chunks[1]["seq"])
    assert [c["seq"] for c in rest] == [c["seq"] for c in chunks[2:]]
    assert '"type": "complete"' in end


async def test_the_sdks_follow_the_log(net: Network) -> None:
    job_id = submit(net, "sdk-logger", "echo one; sleep 1; echo two")
    async with AsyncGpgpuClient(api_url=net.url, api_key=net.token("sdk-logger")) as sdk:
        got = "".join([c.text async for c in sdk.follow_log(job_id)])
    assert got == "one\ntwo\n"
    with GpgpuClient(api_url=net.url, api_key=net.token("sdk-logger")) as sync:
        again = list(sync.follow_log(job_id))
    assert "".join(c.text for c in again) == "one\ntwo\n" and again[0].attempt == 1


@pytest.mark.parametrize("who", ["thief", PROVIDER_OWNER])
async def test_only_the_jobs_owner_reads_its_log(net: Network, who: str) -> None:
    job_id = submit(net, "private", "echo secret-output")
    net.wait_job(job_id, ("SUCCEEDED",), client="private")
    chunks, end = await follow(net, who, job_id)
    assert chunks == []
    assert f"no job {job_id} of yours" in end, end
    mine, _ = await follow(net, "private", job_id)
    assert "".join(c["text"] for c in mine) == "secret-output\n"


def test_cli_job_logs_follow_prints_lines_as_they_come(net: Network) -> None:
    job_id = submit(net, "cli-logger", TICKING)
    env = {**os.environ, "GPGPU_API_URL": net.url, "GPGPU_API_KEY": net.token("cli-logger")}
    with subprocess.Popen([sys.executable, "-m", "client", "job", "logs", "--follow", job_id],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as cli:
        assert cli.stdout is not None and cli.stderr is not None
        # Bounded: the CLI is killed if it has not ended with the job within 90 s.
        watchdog = threading.Timer(90, cli.kill)
        watchdog.start()
        try:
            first = cli.stdout.readline()
            state_then = state(net, job_id, "cli-logger")
            # Read on through the same buffered file, not communicate(): readline may have
            # buffered more than its line (two chunks that came together), and communicate
            # reads the pipe underneath that buffer, so those lines would look lost.
            rest = cli.stdout.read()
            err = cli.stderr.read()
            cli.wait()
        finally:
            watchdog.cancel()
    assert cli.returncode == 0, err
    assert first == "line 1\n" and state_then == "RUNNING"
    assert first + rest == "".join(f"line {i}\n" for i in range(1, 6))
    assert "--- run 1 on log-a ---" in err and f"job {job_id} ended: SUCCEEDED" in err
