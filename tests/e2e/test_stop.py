"""A network stops promptly on SIGTERM: an idle agent while its long poll waits at the API,
then the API with that poll orphaned: the poll has seen its agent go and ended, so the API
need not wait out its graceful shutdown for it, nor cancel it. (Each test module's network
is stopped so, in order: a slow stop was most of a module's teardown.)"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from api.dispatch import GONE_EVERY_S
from tests.e2e.network import Network, network

pytestmark = pytest.mark.e2e

AGENT_STOP_S = 3.0  # the agent drains (one call to the API) and exits
SLACK_S = 3.0  # a loaded machine's share of the API's stop


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("stop"), temporal_server,
                 [("stop-a", "1xH100:80", "1.0", [])]) as n:
        yield n


def stop(net: Network, name: str) -> tuple[int | None, float]:
    child = next(c for c in net.stack.children if c.name == name)
    started = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    try:
        code = child.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()
        code = None
    return code, time.monotonic() - started


def test_an_idle_agent_then_the_api_stop_within_seconds(net: Network) -> None:
    time.sleep(1.0)  # the agent's long poll is waiting at the API now (it waits 20 s)
    code, took = stop(net, "stop-a")
    assert code == 0 and took < AGENT_STOP_S, (code, took)
    code, took = stop(net, "api")
    assert code == 0 and took < GONE_EVERY_S + SLACK_S, (code, took)
    log = (net.stack.logs / "api.log").read_text(errors="replace")
    assert "graceful shutdown exceeded" not in log, log[-2000:]  # uvicorn cancelled a request
