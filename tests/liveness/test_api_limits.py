"""No request freezes the API: a document that expands exponentially is refused at once.

A chain of n fragments, each spreading the next twice, is ~8 words per fragment and
expands to 2^n selections; depth and alias validators that followed every spread took
75 s at n = 24, on the event loop, and `/healthz` went unanswered meanwhile. Against a
real API process: n = 30 is refused at once with the limit named (under 1 s, where
expanding it would take hours: the bound leaves room for a loaded CI machine, on which
100 ms was missed), and a `/healthz` poller running beside it never waits long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.limits import MAX_SELECTIONS
from tests.e2e.network import Network, network

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home: Path = tmp_path_factory.mktemp("limits")
    with network(home, temporal_server, []) as n:
        yield n


def fragment_chain(n: int) -> str:
    frags = " ".join(f"fragment F{i} on Job {{ ...F{i + 1} ...F{i + 1} }}" for i in range(n))
    return f"query Chain {{ jobs {{ ...F0 }} }} {frags} fragment F{n} on Job {{ id state }}"


def test_a_fragment_chain_is_refused_at_once_and_health_stays_answered(net: Network) -> None:
    waits: list[float] = []
    stop = threading.Event()

    def poll_health() -> None:
        with httpx.Client(base_url=net.url, timeout=30) as http:
            while not stop.is_set():
                start = time.perf_counter()
                assert http.get("/healthz").status_code == 200
                waits.append(time.perf_counter() - start)
                time.sleep(0.005)

    def polled(times: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(waits) < times and time.monotonic() < deadline and poller.is_alive():
            time.sleep(0.01)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        net.gql("{ jobs { id } }", "chain")  # sign up and open the connection first
        polled(1)  # the poller is running before the chains are sent (its client made)
        for n in (24, 30):
            start = time.perf_counter()
            r = net.http.post("/graphql", json={"query": fragment_chain(n)},
                              headers=net.headers("chain"))
            took = time.perf_counter() - start
            assert r.status_code == 200, r.text
            messages = [e["message"] for e in r.json()["errors"]]
            assert messages == [
                f"'Chain' expands to {2 ** n * 2 + 1} selections (its fragments spread in "
                f"full); at most {MAX_SELECTIONS} are allowed"], messages
            assert r.json()["data"] is None
            assert took < 1.0, f"n={n}: refused after {took * 1000:.0f} ms"
        # Polled on after them (a loaded machine left the poller 3 polls in a fixed 0.1 s).
        polled(len(waits) + 5)
    finally:
        stop.set()
        poller.join(timeout=10)
    assert len(waits) >= 5, waits  # the poller ran all along
    assert max(waits) < 2.0, f"/healthz waited {max(waits):.2f} s"


def test_a_document_within_the_limits_still_runs(net: Network) -> None:
    """The same shape, shallow enough: answered, so the limit is not refusing everything."""
    data = net.gql(fragment_chain(5), "chain")
    assert data == {"jobs": []}
