"""A rogue provider: a process that holds a provider key and speaks the provider API by hand,
as an attacker would, instead of running the honest agent."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.network import Network
from tests.support.graphql import REGISTER_PROVIDER, accepted


class Rogue:
    """Provider `provider_id`, owned by the account `owner`, registered and kept online."""

    def __init__(self, net: Network, owner: str, provider_id: str, price_micro: int,
                 model: str = "H100"):
        self.net, self.provider_id = net, provider_id
        net.sign_up(owner, ["provider"])
        self.key = net.api_key(owner, ["provider"])
        self.http = httpx.Client(base_url=net.url, timeout=40,
                                 headers={"Authorization": f"Bearer {self.key}"})
        r = self.http.post("/graphql", json={"query": REGISTER_PROVIDER, "variables": {"input": {
            "node": "local", "providerId": provider_id, "region": "local",
            "pricePerGpuHourMicro": price_micro, "runtimes": ["process"],
            "gpus": [{"index": 0, "model": model, "memoryMb": 81920,
                      "uuid": f"GPU-{provider_id}"}],
        }}})
        r.raise_for_status()
        assert "errors" not in r.json(), r.json()
        accepted(r.json()["data"]["registerProvider"])
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat, daemon=True)
        self._beats.start()

    def _beat(self) -> None:
        beat = httpx.Client(base_url=self.net.url, timeout=10,
                            headers={"Authorization": f"Bearer {self.key}"})
        while not self._stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                beat.post(f"/providers/{self.provider_id}/heartbeat", json=[])
            self._stop.wait(1.0)
        beat.close()

    def close(self) -> None:
        self._stop.set()
        self._beats.join(timeout=5)
        self.http.close()

    def poll(self, provider_id: str | None = None, wait_s: float = 5) -> httpx.Response:
        return self.http.get(f"/provider/v1/providers/{provider_id or self.provider_id}"
                             f"/assignments", params={"wait_s": wait_s})

    def take(self, kind: str, timeout_s: float = 60) -> dict[str, Any]:
        """Long-poll until an assignment of this kind comes (others are left to time out)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = self.poll()
            r.raise_for_status()
            for a in r.json()["assignments"]:
                if a["kind"] == kind:
                    return dict(a)
        raise AssertionError(f"no {kind} assignment for {self.provider_id}")

    def call(self, what: str, aid: str, body: dict[str, Any],
             provider_id: str | None = None, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else None
        return self.http.post(
            f"/provider/v1/providers/{provider_id or self.provider_id}/assignments/{aid}/{what}",
            json=body, headers=headers,
        )


class State:
    """What an attack must leave as it was: the control plane's tables, read directly."""

    def __init__(self, home: Path):
        self.path = home / "views.db"

    def snapshot(self) -> dict[str, Any]:
        with sqlite3.connect(self.path, timeout=30) as db:
            def rows(sql: str) -> list[tuple[Any, ...]]:
                return sorted(db.execute(sql).fetchall(), key=repr)

            return {
                "job_events": rows("SELECT job_id, seq, type FROM job_events"),
                "ledger": rows("SELECT account, seq, amount_micro FROM ledger_entries"),
                "reputation": rows("SELECT provider_id, reputation, outcomes FROM providers"),
                "assignments": rows("SELECT assignment_id, handed_out_at, finished_at, outcome"
                                    " FROM assignments"),
            }

    def assignment(self, aid: str) -> dict[str, Any]:
        with sqlite3.connect(self.path, timeout=30) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM assignments WHERE assignment_id = ?",
                             (aid,)).fetchone()
            return dict(row) if row else {}

    def transfers(self, transfer_id: str) -> list[int]:
        """Amounts credited by one ledger transfer (its entry on the receiving account)."""
        with sqlite3.connect(self.path, timeout=30) as db:
            rows = db.execute("SELECT amount_micro FROM ledger_entries WHERE transfer_id = ?"
                              " AND amount_micro > 0", (transfer_id,)).fetchall()
        return [int(r[0]) for r in rows]


def settled(state: State, wait_s: float = 0.4) -> dict[str, Any]:
    """The state once nothing moves (the projection has caught up)."""
    before = state.snapshot()
    while True:
        time.sleep(wait_s)
        now = state.snapshot()
        if now == before:
            return now
        before = now
