"""GpgpuClient and AsyncGpgpuClient offer the same calls: names, parameters, requests, results."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import ApiError, AsyncGpgpuClient, GpgpuClient, SpecRejectedError
from tests.client.fake_api import CLIENT, FakeApi

# What each client names its own way: closing, and the context manager protocol.
LIFECYCLE = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}


def public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")}


def parameters(method: Any) -> list[tuple[str, Any, Any, Any]]:
    """What a caller sees of a method's parameters (self left out, types as written)."""
    return [(p.name, p.kind, p.default, p.annotation)
            for p in inspect.signature(method).parameters.values()]


def test_both_clients_have_the_same_public_methods() -> None:
    sync, aio = public(GpgpuClient), public(AsyncGpgpuClient)
    assert {LIFECYCLE.get(n, n) for n in sync} == aio
    # the calls the async client once lacked are there
    assert {"sign_up", "sign_out", "explain", "explain_spec_file", "api_keys",
            "create_api_key", "revoke_api_key"} <= aio


@pytest.mark.parametrize("name", sorted(public(GpgpuClient) - set(LIFECYCLE)))
def test_each_method_takes_the_same_parameters(name: str) -> None:
    sync = GpgpuClient("http://api.test", CLIENT)
    aio = AsyncGpgpuClient("http://api.test", CLIENT)
    assert parameters(getattr(sync, name)) == parameters(getattr(aio, name))
    assert inspect.getdoc(getattr(sync, name)) == inspect.getdoc(getattr(aio, name))
    if name in ("follow", "follow_log"):  # streams: an async generator in the async client
        assert inspect.isasyncgenfunction(getattr(aio, name))
    else:
        assert inspect.iscoroutinefunction(getattr(aio, name)), name
        assert not inspect.iscoroutinefunction(getattr(sync, name)), name


def test_the_constructors_take_the_same_parameters() -> None:
    sync = [p for p in parameters(GpgpuClient.__init__) if p[0] != "transport"]
    aio = [p for p in parameters(AsyncGpgpuClient.__init__) if p[0] != "transport"]
    assert sync == aio
    assert "transport" in inspect.signature(AsyncGpgpuClient.__init__).parameters


SPEC = {"name": "x", "command": ["true"], "max_price_per_gpu_hour": "1"}
# (method, args): calls the fake API answers; together they cover queries, mutations that
# change the session token, and REST storage calls.
CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("me", ()),
    ("account", ()),
    ("submit_job", (SPEC,)),
    ("job", ("job-1",)),
    ("jobs", (7,)),
    ("create_api_key", ("box", ["provider"])),
    ("add_roles", (["provider"],)),
    ("list_objects", ("in",)),
    ("change_password", ("alice's password", "a new one")),  # last: the fake knows one token
]


class Recorder:
    """The fake API behind a transport that writes down each request as sent."""

    def __init__(self) -> None:
        self.api = FakeApi()
        self.sent: list[tuple[str, str, str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, str(request.url),
                          request.headers.get("Authorization", ""), body))
        return self.api.handle(request)


async def test_both_clients_send_the_same_requests_and_return_the_same_results() -> None:
    sync_seen, aio_seen = Recorder(), Recorder()
    with GpgpuClient("http://api.test", transport=httpx.MockTransport(sync_seen.handle)) as gp:
        sync_results = [getattr(gp, name)(*args) for name, args in CALLS]
        sync_token = gp.token
        with pytest.raises(ApiError, match="401"):  # sent with the new session's token
            gp.me()
    async with AsyncGpgpuClient(
        "http://api.test", transport=httpx.MockTransport(aio_seen.handle)
    ) as agp:
        aio_results = [await getattr(agp, name)(*args) for name, args in CALLS]
        aio_token = agp.token
        with pytest.raises(ApiError, match="401"):
            await agp.me()

    assert aio_seen.sent == sync_seen.sent
    # list_objects asked `me` for the space first; then the `me` refused
    assert len(sync_seen.sent) == len(CALLS) + 2
    assert aio_results == sync_results
    assert aio_token == sync_token == "gps_after-the-change"
    assert sync_seen.sent[-1][2] == "Bearer gps_after-the-change"  # the new session is used


async def test_local_spec_problems_are_the_same_for_both(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ncommand: [a]\nmax_price_per_gpu_hour: 1\nresources: {gpus: 0}\n")
    dead = "http://127.0.0.1:9"  # nothing is asked of the API: the file is refused first
    with GpgpuClient(dead) as gp, pytest.raises(SpecRejectedError) as sync_err:
        gp.explain_spec_file(spec)
    async with AsyncGpgpuClient(dead) as agp:
        with pytest.raises(SpecRejectedError) as aio_err:
            await agp.explain_spec_file(spec)
        with pytest.raises(SpecRejectedError) as aio_submit:
            await agp.submit_spec_file(spec)
    expected = f"{spec}: resources.gpus: Input should be greater than or equal to 1"
    assert str(sync_err.value) == str(aio_err.value) == str(aio_submit.value) == expected
