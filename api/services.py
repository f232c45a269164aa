"""What the API process holds: the application, the read model, storage, Temporal, and
the projection runner that keeps the read model current and wakes subscribers."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client

from domain.application import Network
from domain.projection import CHANNEL, Projector
from infra.db import ViewDB
from infra.settings import Settings
from infra.storage import ObjectStore

log = logging.getLogger(__name__)


Rows = list[dict[str, Any]]


class Broadcaster:
    """Wakes every waiting subscriber when the projection moves forward.

    The wake carries the job events the batch added (when this process applied
    it), so a hundred subscribers cost no hundred queries. A waiter takes the
    current future *before* reading the view, so an advance that lands between
    its read and its wait is never missed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._future: asyncio.Future[Rows] = loop.create_future()

    def current(self) -> asyncio.Future[Rows]:
        return self._future

    def advance(self, position: int, rows: Rows) -> None:
        self.loop.call_soon_threadsafe(self._resolve, rows)

    def _resolve(self, rows: Rows) -> None:
        future, self._future = self._future, self.loop.create_future()
        if not future.done():
            future.set_result(rows)


class PostgresListener(threading.Thread):
    """LISTENs on a dedicated connection: another replica's projection woke us."""

    def __init__(self, settings: Settings, broadcaster: Broadcaster):
        super().__init__(name="pg-listen", daemon=True)
        self.settings, self.broadcaster = settings, broadcaster
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.settings.postgres_conninfo(), autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.broadcaster.advance(int(note.payload), [])
            except Exception:
                log.exception("LISTEN connection lost; reconnecting")
                self.stopping.wait(1.0)


class ProjectionThread(threading.Thread):
    """Runs the projector: applies new events as soon as they are committed."""

    def __init__(self, projector: Projector, idle_sleep_s: float = 0.005):
        super().__init__(name="projection", daemon=True)
        self.projector, self.idle_sleep_s = projector, idle_sleep_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                applied = self.projector.run_once()
            except Exception:
                log.exception("projection batch failed; retrying")
                applied = 0
            if not applied:
                self.stopping.wait(self.idle_sleep_s)


@dataclass
class Services:
    settings: Settings
    network: Network
    views: ViewDB
    store: ObjectStore
    temporal: Client
    broadcaster: Broadcaster
    projector: Projector
    threads: list[ProjectionThread | PostgresListener] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, temporal: Client) -> Services:
        network = Network(env=settings.eventsourcing_env())
        views = ViewDB(settings)
        projector = Projector(network, views)
        broadcaster = Broadcaster(asyncio.get_running_loop())
        projector.listeners.append(broadcaster.advance)
        threads: list[ProjectionThread | PostgresListener] = [ProjectionThread(projector)]
        if views.is_postgres:
            threads.append(PostgresListener(settings, broadcaster))
        for thread in threads:
            thread.start()
        store = settings.object_store()
        return cls(settings, network, views, store, temporal, broadcaster, projector, threads)

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.views.query, sql, params)

    def stop(self) -> None:
        for thread in self.threads:
            thread.stopping.set()
            thread.join(timeout=5)
        self.views.close()
