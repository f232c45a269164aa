"""Subscriptions end: a finished job's stream sends what is after `after` and completes, a
bad `after` is refused by name, one account's live subscriptions are capped, and so are all
accounts' together and the websockets one API process holds (accounts are free to open).

Against a real network (API, control worker, one simulated provider), over the
graphql-transport-ws protocol by hand, so that what is asserted is what a client reads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.e2e.network import Network, network
from tests.support.graphql import JOB_EVENTS, SUBMIT

pytestmark = pytest.mark.e2e

# One provider and no fault under test: a provider slowed by a loaded machine must not
# count as lost (it would be excluded, and the job wait for another that never comes).
PATIENT = {"GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S": "30",
           "GPGPU_GPU_SCHEDULE_TO_START_TIMEOUT_S": "60"}

CAP = 3
EVERYONE = CAP + 2  # live subscriptions of every account together
SOCKETS = 3


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("subs-end"), temporal_server,
                 [("ends-a", "1xH100:80", "2.0", [])],
                 {"GPGPU_MAX_SUBSCRIPTIONS_PER_ACCOUNT": str(CAP),
                  "GPGPU_MAX_SUBSCRIPTIONS_PER_PROCESS": str(EVERYONE),
                  "GPGPU_MAX_WEBSOCKETS_PER_PROCESS": str(SOCKETS), **PATIENT}) as n:
        yield n


def submit(net: Network, client: str, command: str) -> str:
    body = {"name": "ends", "command": command, "max_price_per_gpu_hour": "3", "timeout": 120}
    data = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert data["__typename"] == "JobSubmitted", data
    return str(data["job"]["id"])


class Socket:
    """One graphql-transport-ws connection, signed in as `client`."""

    def __init__(self, net: Network, client: str):
        self.url = net.url.replace("http://", "ws://") + "/graphql"
        self.init = {"Authorization": f"Bearer {net.token(client)}"}
        self.next_id = 0

    async def __aenter__(self) -> Socket:
        self.ws = await websockets.connect(self.url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        await self.ws.send(json.dumps({"type": "connection_init", "payload": self.init}))
        assert json.loads(await self.ws.recv())["type"] == "connection_ack"
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.ws.close()

    async def subscribe(self, job_id: str, after: int) -> str:
        self.next_id += 1
        await self.ws.send(json.dumps({
            "id": str(self.next_id), "type": "subscribe",
            "payload": {"query": JOB_EVENTS, "variables": {"id": job_id, "after": after}}}))
        return str(self.next_id)

    async def until_end(self, sid: str, timeout_s: float = 10) -> tuple[list[Any], str]:
        """Stream `sid`'s events, then how it ended: "complete", or its error messages."""
        got: list[Any] = []
        errors: list[str] = []
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
            if msg.get("id") != sid:
                continue  # another stream's
            if msg["type"] == "next" and msg["payload"].get("errors"):
                errors += [e["message"] for e in msg["payload"]["errors"]]
            elif msg["type"] == "next":
                got.append(msg["payload"]["data"]["jobEvents"])
            elif msg["type"] == "error":
                errors += [e["message"] for e in msg["payload"]]
                return got, " | ".join(errors)
            elif msg["type"] == "complete":
                return got, " | ".join(errors) or "complete"


async def test_a_finished_stream_sends_the_rest_and_completes(net: Network) -> None:
    job_id = submit(net, "ender", "echo done")
    net.wait_job(job_id, ("SUCCEEDED",), "ender")
    history = net.gql("query($id: ID!) { job(id: $id) { events { seq type } } }", "ender",
                      id=job_id)["job"]["events"]
    seqs = [e["seq"] for e in history]
    assert seqs == list(range(1, len(seqs) + 1)) and history[-1]["type"] == "JobSucceeded"
    async with Socket(net, "ender") as ws:
        for after, expected in ((seqs[-1], []), (-1, history), (0, history),
                                (seqs[-3], history[-2:])):
            got, end = await ws.until_end(await ws.subscribe(job_id, after))
            assert got == expected, (after, got)
            assert end == "complete", (after, end)


async def test_a_bad_after_is_refused_by_name(net: Network) -> None:
    job_id = submit(net, "ender", "echo done")
    last = net.wait_job(job_id, ("SUCCEEDED",), "ender") and len(net.gql(
        "query($id: ID!) { job(id: $id) { events { seq } } }", "ender", id=job_id)["job"]["events"])
    async with Socket(net, "ender") as ws:
        for after, words in ((-2, "after: must be -1 or 0"), (2**31 - 1, "after: must be"),
                             (last + 5, f"after: job {job_id}'s last event is seq {last}")):
            got, end = await ws.until_end(await ws.subscribe(job_id, after))
            assert got == [] and words in end, (after, got, end)


async def test_live_subscriptions_per_account_are_capped(net: Network) -> None:
    job_id = submit(net, "capped", "sleep 60")
    try:
        async with Socket(net, "capped") as ws, Socket(net, "other") as other:
            for _ in range(CAP):
                await ws.subscribe(job_id, 0)
            await asyncio.sleep(1)  # the CAP streams are open (their first events sent)
            await ws.subscribe(job_id, 0)
            while True:  # the first events of the open streams, then the refusal
                msg = json.loads(await asyncio.wait_for(ws.ws.recv(), 10))
                if msg["id"] == str(CAP + 1):
                    break
            assert f"subscriptions: at most {CAP} live subscriptions per account" in (
                json.dumps(msg)), msg
            # Another account is not affected (it may not see this job, but it is not capped).
            _, end = await other.until_end(await other.subscribe(job_id, 0))
            assert f"jobId: no job {job_id} of yours" in end, end
            # Ending one stream makes room for another.
            await ws.ws.send(json.dumps({"id": "1", "type": "complete"}))
            await asyncio.sleep(0.5)
            sid = await ws.subscribe(job_id, 0)
            while True:
                msg = json.loads(await asyncio.wait_for(ws.ws.recv(), 10))
                if msg["id"] == sid:
                    break
            assert msg["type"] == "next" and not msg["payload"].get("errors"), msg
    finally:
        net.gql("mutation($id: ID!) { cancelJob(id: $id) { __typename } }", "capped",
                id=job_id)


async def opened(net: Network, client: str, timeout_s: float = 10) -> Socket:
    """A socket of `client`, once the API has room for it (another test's may be closing)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await Socket(net, client).__aenter__()
        except websockets.exceptions.InvalidStatus:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_the_websockets_and_subscriptions_of_every_account_together_are_capped(
        net: Network) -> None:
    jobs = {f"crowd-{i}": submit(net, f"crowd-{i}", "sleep 60") for i in (1, 2, 3, 4)}
    sockets = [await opened(net, f"crowd-{i}") for i in (1, 2, 3)]
    try:
        # A fourth websocket, of anyone, is closed before it is accepted: try again later.
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await Socket(net, "crowd-4").__aenter__()
        assert refused.value.response.status_code == 403, refused.value
        # Subscriptions: crowd-1 holds its CAP, crowd-2 two more; then the process is full,
        # and crowd-3, under its own cap, is refused too.
        for ws, n, client in ((sockets[0], CAP, "crowd-1"),
                              (sockets[1], EVERYONE - CAP, "crowd-2")):
            for _ in range(n):
                await ws.subscribe(jobs[client], 0)
        await asyncio.sleep(1)
        _, end = await sockets[2].until_end(await sockets[2].subscribe(jobs["crowd-3"], 0))
        assert f"this API holds its most, {EVERYONE} live subscriptions" in end, end
        # Room again once some end: a socket closes, with its subscriptions.
        await sockets.pop(1).__aexit__()
        crowd_4 = await opened(net, "crowd-4")
        sockets.append(crowd_4)
        sid = await crowd_4.subscribe(jobs["crowd-4"], 0)
        while True:
            msg = json.loads(await asyncio.wait_for(crowd_4.ws.recv(), 10))
            if msg["id"] == sid:
                break
        assert msg["type"] == "next" and not msg["payload"].get("errors"), msg
    finally:
        for ws in sockets:
            await ws.__aexit__()
        for client, job_id in jobs.items():
            net.gql("mutation($id: ID!) { cancelJob(id: $id) { __typename } }", client,
                    id=job_id)
