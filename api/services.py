"""What the API process holds: the application, the read model, storage, Temporal, the
projection runner that keeps the read model current and wakes subscribers, and the
providers' heartbeats: their ingest and the liveness monitor."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client

from api.auth import Authenticator, SignInThrottle
from api.multiplex import Hub
from domain.application import Network
from domain.errors import DomainError, UnknownProvider
from domain.identity import Caller
from domain.projection import CHANNEL, Projector
from infra.db import PostgresChanges, SqliteChanges, ViewDB
from infra.settings import Settings
from infra.storage import ObjectStore
from infra.telemetry import (
    HealthWatch,
    Heartbeat,
    degraded_gpus,
    ingest_heartbeats,
    liveness_changes,
    liveness_rows,
    parse_readings,
)

log = logging.getLogger(__name__)


Rows = list[dict[str, Any]]


class Broadcaster:
    """Wakes every waiting subscriber when the projection moves forward.

    A wake's result is the rows the batch added when this process applied it (every row
    of that batch), or None when it only knows that something changed (another replica's
    NOTIFY): then subscribers read the view. The pushed rows are kept per stream, the
    last `RECENT_PER_STREAM` of the last `RECENT_STREAMS` streams, so a hundred
    subscribers cost no hundred queries, nor does one that fell a few events behind
    while it was sending. A waiter takes the current future *before* reading, so an
    advance that lands between its read and its wait is never missed.
    """

    RECENT_PER_STREAM = 256
    RECENT_STREAMS = 2048

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._future: asyncio.Future[Rows | None] = loop.create_future()
        self._recent: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._pushed_to = 0  # the last position whose rows were pushed here
        # Told of each advance on the event loop, after the rows are kept (api/multiplex.py).
        self.listeners: list[Callable[[int, Rows | None], None]] = []

    def current(self) -> asyncio.Future[Rows | None]:
        return self._future

    def advance(self, position: int, rows: Rows | None) -> None:
        """From any thread: the projection reached `position`, adding `rows` (None: not
        known here)."""
        self.loop.call_soon_threadsafe(self._resolve, position, rows)

    def recent(self, stream: str, after: int) -> Rows | None:
        """The kept rows of `stream` after seq `after`, oldest first ([] if none); None if
        they do not go on from `after` (some were never pushed here, or are gone): then
        the caller reads the view."""
        kept = self._recent.get(stream)
        newer: Rows = []
        for row in reversed(kept or ()):  # a subscriber is seldom more than a few behind
            if row["seq"] <= after:
                break
            newer.append(row)
        newer.reverse()
        return None if newer and newer[0]["seq"] != after + 1 else newer

    def _resolve(self, position: int, rows: Rows | None) -> None:
        if rows is None and position <= self._pushed_to:
            return  # the NOTIFY of a batch this process applied and pushed already
        for row in rows or ():
            stream = row["stream"]
            kept = self._recent.get(stream)
            if kept is None:
                kept = self._recent[stream] = deque(maxlen=self.RECENT_PER_STREAM)
                if len(self._recent) > self.RECENT_STREAMS:
                    self._recent.popitem(last=False)
            else:
                self._recent.move_to_end(stream)
            kept.append(row)
        if rows is not None:
            self._pushed_to = max(self._pushed_to, position)
        for listener in self.listeners:
            try:
                listener(position, rows)
            except Exception:  # one listener's fault must not stop the others' wake-ups
                log.exception("a listener of the projection's advance failed")
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
                            self.broadcaster.advance(int(note.payload), None)
            except Exception:
                log.exception("LISTEN connection lost; reconnecting")
                self.stopping.wait(1.0)


class ProjectionThread(threading.Thread):
    """Runs the projector: applies new events as soon as they are committed.

    With `changed` (infra.db's SqliteChanges or PostgresChanges) an idle poll costs a
    pragma or a look at a LISTEN socket, not two queries; the projector still looks for
    itself every `FULL_POLL_S`.
    """

    FULL_POLL_S = 1.0

    def __init__(self, projector: Projector, idle_sleep_s: float = 0.005,
                 changed: SqliteChanges | PostgresChanges | None = None):
        super().__init__(name="projection", daemon=True)
        self.projector, self.idle_sleep_s, self.changed = projector, idle_sleep_s, changed
        self.stopping = threading.Event()

    def run(self) -> None:
        next_full = 0.0
        try:
            while not self.stopping.is_set():
                applied = 0
                # Asked before the batch is read: a commit after the read shows next time.
                if self._changed() or time.monotonic() >= next_full:
                    next_full = time.monotonic() + self.FULL_POLL_S
                    try:
                        applied = self.projector.run_once()
                    except Exception:
                        log.exception("projection batch failed; retrying")
                if not applied:
                    self.stopping.wait(self.idle_sleep_s)
        finally:
            self._stop_watching()

    def _changed(self) -> bool:
        if self.changed is None:
            return True
        try:
            return self.changed()
        except Exception:
            log.exception("cannot tell whether the event store changed; polling it instead")
            self._stop_watching()
            return True

    def _stop_watching(self) -> None:
        if self.changed is not None:
            self.changed.close()
            self.changed = None


class HeartbeatIngest:
    """Gathers the heartbeats that arrive together and writes them as one batch.

    A request waits for its batch to be written (so an answered heartbeat is
    recorded); while one batch is written the next one gathers, so the batch grows
    with the load and the database sees a few statements per batch, not per beat.
    GPU health changes seen in a batch go to the domain (only changes: `HealthWatch`).
    """

    def __init__(self, views: ViewDB, network: Network, health: HealthWatch):
        self.views, self.network, self.health = views, network, health
        self._pending: list[tuple[Heartbeat, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, beat: Heartbeat) -> None:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((beat, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        await done

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, [beat for beat, _ in batch])
            except Exception:
                # One bad beat must not cost the others theirs: the batch's transaction was
                # rolled back whole, so each beat is written again on its own.
                log.warning("writing %d heartbeats together failed; writing each alone",
                            len(batch))
                for beat, done in batch:
                    await self._write_one(beat, done)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _write_one(self, beat: Heartbeat, done: asyncio.Future[None]) -> None:
        try:
            await asyncio.to_thread(self._write, [beat])
        except Exception as err:
            log.warning("heartbeat of %s refused: %s", beat.provider_id, err)
            if not done.done():
                done.set_exception(ValueError(
                    f"telemetry: the heartbeat of {beat.provider_id!r} was refused: {err}"
                ))
        else:
            if not done.done():
                done.set_result(None)

    def _write(self, batch: list[Heartbeat]) -> None:
        ingest_heartbeats(self.views, batch)
        for change in self.health.observe(batch):
            try:
                self.network.report_gpu_health(
                    change.provider_id, change.index, change.healthy, change.reason
                )
            except DomainError as err:  # e.g. a reading for a GPU the provider never declared
                log.warning("GPU health of %s: %s", change.provider_id, err)
                self.health.ignore(change.provider_id, change.index)


class ProviderMonitor(threading.Thread):
    """Records a provider's going offline (missed heartbeats) and coming back, once each.

    Twice per heartbeat interval it compares the read model's provider status with
    the last heartbeats (`infra.telemetry.liveness_changes`) and tells the domain of
    the differences, and refreshes what `HealthWatch` knows. Safe in several API
    replicas at once: the domain records a change only once (the second replica's
    save conflicts, reloads, and finds nothing left to do).
    """

    def __init__(self, settings: Settings, views: ViewDB, network: Network, health: HealthWatch):
        super().__init__(name="provider-monitor", daemon=True)
        self.settings, self.views, self.network, self.health = settings, views, network, health
        self.stopping = threading.Event()
        self.tick_s = min(1.0, max(0.05, settings.provider_heartbeat_interval_s / 2))
        self.started_at = time.time()

    def run(self) -> None:
        while not self.stopping.wait(self.tick_s):
            try:
                self.check()
            except Exception:
                log.exception("provider liveness check failed; retrying")

    def check(self) -> None:
        now, after = time.time(), self.settings.offline_after_s
        self.health.refresh(degraded_gpus(self.views))
        rows = liveness_rows(self.views, now, after)
        changes = liveness_changes(
            rows, now, after, self.settings.provider_heartbeat_interval_s, self.started_at
        )
        for change in changes:
            try:
                if change.online:
                    self.network.provider_online(change.provider_id)
                else:
                    self.network.provider_offline(change.provider_id, change.reason)
            except DomainError as err:
                log.warning("liveness of %s: %s", change.provider_id, err)


Worker = ProjectionThread | PostgresListener | ProviderMonitor


@dataclass
class Services:
    settings: Settings
    network: Network
    views: ViewDB
    store: ObjectStore
    temporal: Client
    broadcaster: Broadcaster
    projector: Projector
    heartbeats: HeartbeatIngest
    threads: list[Worker] = field(default_factory=list)
    # Heartbeats and the monitor use a connection of their own, so that a burst of
    # heartbeats never queues the read queries behind it (but the memory store's
    # in-memory views exist on one connection only).
    telemetry_views: ViewDB | None = None
    # Providers once seen in the read model (they are never removed): a heartbeat costs no query.
    known_providers: set[str] = field(default_factory=set)
    # Bearer tokens to callers, remembered for `auth_cache_ttl_s` (api/auth.py).
    auth: Authenticator = field(init=False)
    # Wrong passwords per email: guessing is refused after a few (api/auth.py).
    sign_ins: SignInThrottle = field(init=False)
    # Live subscriptions per account (user id), in this process.
    open_subscriptions: dict[str, int] = field(default_factory=dict)
    # Live subscriptions by stream, sharing each event's execution (api/multiplex.py).
    live: Hub = field(init=False)

    def __post_init__(self) -> None:
        self.live = Hub(self.query, self.broadcaster.recent,
                        lambda: asyncio.to_thread(self.projector.position))
        self.broadcaster.listeners.append(self.live.advanced)
        self.auth = Authenticator(self.network, self.settings.auth_cache_ttl_s)
        self.sign_ins = SignInThrottle(
            self.telemetry_views or self.views,
            max_source_failures=self.settings.sign_in_max_failures_per_address)

    @classmethod
    async def start(cls, settings: Settings, temporal: Client) -> Services:
        network = Network(env=settings.eventsourcing_env())
        views = ViewDB(settings)
        projector = Projector(network, views)
        broadcaster = Broadcaster(asyncio.get_running_loop())
        projector.listeners.append(broadcaster.advance)
        telemetry_views = views if settings.event_store == "memory" else ViewDB(settings)
        health = HealthWatch()
        changes: SqliteChanges | PostgresChanges | None = None
        if settings.event_store == "sqlite":
            changes = SqliteChanges(settings.events_path)
        elif settings.event_store == "postgres":
            table = network.recorder.events_table_name  # type: ignore[attr-defined]
            try:
                changes = PostgresChanges(settings, table)
            except Exception as err:  # e.g. a database user that may not add triggers
                log.warning("the projection polls PostgreSQL: no NOTIFY trigger on %s (%s)",
                            table, err)
        threads: list[Worker] = [
            ProjectionThread(projector, changed=changes),
            ProviderMonitor(settings, telemetry_views, network, health),
        ]
        if views.is_postgres:
            threads.append(PostgresListener(settings, broadcaster))
        for thread in threads:
            thread.start()
        store = settings.object_store()
        heartbeats = HeartbeatIngest(telemetry_views, network, health)
        return cls(settings, network, views, store, temporal, broadcaster, projector,
                   heartbeats, threads, telemetry_views)

    async def heartbeat(self, provider_id: str, telemetry: Any) -> None:
        """A provider is alive: check its telemetry, then record it with the others arriving.

        ValueError names the field (`telemetry.0.index: ...`); UnknownProvider if unregistered.
        """
        readings = parse_readings(telemetry)
        if provider_id not in self.known_providers:
            known = await self.query(
                "SELECT status FROM providers WHERE provider_id = ?", (provider_id,)
            )
            if not known:
                raise UnknownProvider(f"providerId: no provider {provider_id!r}; register first")
            self.known_providers.add(provider_id)
        await self.heartbeats.submit(Heartbeat(provider_id, time.time(), readings))

    @contextmanager
    def subscription_of(self, caller: Caller | None) -> Iterator[None]:
        """One more live subscription of the caller's account while the block runs; refused
        past `max_subscriptions_per_account` (each one holds a task and a poll a second)."""
        account = caller.user_id if caller is not None else "anonymous"
        held = self.open_subscriptions.get(account, 0)
        cap = self.settings.max_subscriptions_per_account
        if held >= cap:
            raise ValueError(f"subscriptions: at most {cap} live subscriptions per account; "
                             f"end one (complete) before starting another")
        self.open_subscriptions[account] = held + 1
        try:
            yield
        finally:
            left = self.open_subscriptions[account] - 1
            if left:
                self.open_subscriptions[account] = left
            else:
                del self.open_subscriptions[account]

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.views.query, sql, params)

    async def projected(self, timeout_s: float = 5.0) -> None:
        """Wait until the read model shows every event recorded so far (a command's too)."""
        target = await asyncio.to_thread(self.network.recorder.max_notification_id) or 0
        deadline = time.monotonic() + timeout_s
        while await asyncio.to_thread(self.projector.position) < target:
            if time.monotonic() > deadline:
                raise RuntimeError("the change was recorded but the read model is not keeping up")
            await asyncio.wait({self.broadcaster.current()}, timeout=0.2)

    def stop(self) -> None:
        for thread in self.threads:
            thread.stopping.set()
            thread.join(timeout=5)
        if self.telemetry_views is not None and self.telemetry_views is not self.views:
            self.telemetry_views.close()
        self.views.close()
