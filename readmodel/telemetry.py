"""Provider heartbeats: liveness, a bounded store of GPU telemetry, and GPU health.

Samples, not events: a heartbeat updates the provider's liveness row and
writes its GPU readings into a ring of the provider's last
`provider_samples_kept` heartbeats (slot = heartbeat number mod N), so the
store never grows and needs no pruning. Only changes become domain events:
a GPU whose readings show uncorrected ECC or Xid errors is reported degraded
(and healthy again when they clear), and a provider that missed
`provider_missed_heartbeats` intervals goes offline, then online when it
beats again (`liveness_changes`, run by the API's monitor).

A batch is a handful of multi-row statements in one transaction, whatever
its size; the API gathers the heartbeats that arrive together into one batch.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from domain.limits import GPU_INDEX, MAX_PROVIDER_GPUS, TELEMETRY
from infra.db import Cursor
from infra.settings import Settings
from readmodel.schema import ViewDB

T = TypeVar("T")

MAX_GPUS_PER_HEARTBEAT = MAX_PROVIDER_GPUS
# Rows per statement: SQLite allows 32766 parameters, PostgreSQL 65535.
_ROWS_PER_STATEMENT = 1000


@dataclass(frozen=True)
class GpuReading:
    """One GPU's sensors in one heartbeat, as the agent reads them (None: not available)."""

    index: int
    utilization_pct: int | None = None
    memory_used_mb: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    ecc_errors: int | None = None  # uncorrected, since the driver loaded
    xid_errors: int | None = None  # critical Xid events, since the agent started

    @property
    def trouble(self) -> str:
        """Why this GPU should get no work ("" when healthy)."""
        why = []
        if self.ecc_errors:
            why.append(f"ECC errors: {self.ecc_errors}")
        if self.xid_errors:
            why.append(f"Xid errors: {self.xid_errors}")
        return "; ".join(why)


SAMPLE_FIELDS = tuple(f.name for f in fields(GpuReading) if f.name != "index")


@dataclass(frozen=True)
class Heartbeat:
    provider_id: str
    at: float  # unix time the API received it
    readings: tuple[GpuReading, ...] = ()


class TelemetryRefused(ValueError):
    """A heartbeat's telemetry the API does not take: `field` the reading it is about
    ("telemetry.0.index"), `reason` why; the message reads "field: reason"."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


def parse_readings(raw: Any) -> tuple[GpuReading, ...]:
    """The agent's telemetry (a JSON list of objects), checked; TelemetryRefused names the
    field."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise TelemetryRefused("telemetry", "must be a list of GPU readings")
    if len(raw) > MAX_GPUS_PER_HEARTBEAT:
        raise TelemetryRefused("telemetry", f"at most {MAX_GPUS_PER_HEARTBEAT} GPUs")
    readings = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise TelemetryRefused(f"telemetry.{n}", "must be an object")
        index: Any = item.get("index")
        if (why := GPU_INDEX.problem(index)) is not None:
            raise TelemetryRefused(f"telemetry.{n}.index", why)
        values: dict[str, Any] = {}
        for name in SAMPLE_FIELDS:  # each bounded by domain/limits.py, or null
            value = item.get(name)
            if value is not None and (why := TELEMETRY[name].problem(value)) is not None:
                raise TelemetryRefused(f"telemetry.{n}.{name}", f"{why} (or null)")
            values[name] = value
        readings.append(GpuReading(index=index, **values))
    if len({r.index for r in readings}) != len(readings):
        raise TelemetryRefused("telemetry", "two readings for the same GPU index")
    return tuple(readings)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _values(columns: int, rows: int) -> str:
    one = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([one] * rows)


def ingest_heartbeats(views: ViewDB, batch: Sequence[Heartbeat], keep: int | None = None) -> None:
    """Record a batch of heartbeats: liveness rows and the GPU readings, in one transaction.

    `keep` (default: settings.provider_samples_kept) heartbeats per provider stay in the
    sample ring; a provider that appears several times in the batch takes several slots.
    """
    if not batch:
        return
    keep = keep or views.settings.provider_samples_kept
    beats = Counter(hb.provider_id for hb in batch)
    last_at: dict[str, float] = {}
    for hb in batch:
        last_at[hb.provider_id] = max(hb.at, last_at.get(hb.provider_id, hb.at))
    # Sorted: concurrent batches (two API replicas) lock the rows in the same order.
    providers = sorted(beats)
    with views.transaction() as cur:
        total: dict[str, int] = {}
        if views.is_postgres:
            # Samples, not facts: a crash may lose the last few ms of heartbeats, and not
            # waiting for the WAL flush makes a small batch cost a fraction of a millisecond.
            cur.execute("SET LOCAL synchronous_commit = off")
            # One statement text whatever the batch's size, so it is prepared once.
            for row in cur.all(
                "INSERT INTO provider_liveness (provider_id, last_heartbeat_at, beats)"
                " SELECT * FROM unnest(?::text[], ?::float8[], ?::int8[])"
                " ON CONFLICT (provider_id) DO UPDATE SET"
                " last_heartbeat_at = excluded.last_heartbeat_at,"
                " beats = provider_liveness.beats + excluded.beats"
                " RETURNING provider_id, beats",
                (providers, [last_at[p] for p in providers], [beats[p] for p in providers]),
            ):
                total[row["provider_id"]] = int(row["beats"])
            providers = []
        for chunk in _chunks(providers, _ROWS_PER_STATEMENT):
            params = [v for pid in chunk for v in (pid, last_at[pid], beats[pid])]
            for row in cur.all(
                "INSERT INTO provider_liveness (provider_id, last_heartbeat_at, beats) VALUES "
                + _values(3, len(chunk))
                + " ON CONFLICT (provider_id) DO UPDATE SET"
                " last_heartbeat_at = excluded.last_heartbeat_at,"
                " beats = provider_liveness.beats + excluded.beats"
                " RETURNING provider_id, beats",
                params,
            ):
                total[row["provider_id"]] = int(row["beats"])
        _write_samples(cur, batch, beats, total, keep)


def _write_samples(
    cur: Cursor, batch: Sequence[Heartbeat], beats: Mapping[str, int],
    total: Mapping[str, int], keep: int,
) -> None:
    # The batch's k beats of a provider that has now sent B are its beats B-k+1 .. B.
    number = {pid: total[pid] - beats[pid] for pid in beats}
    rows: dict[tuple[str, int, int], tuple[Any, ...]] = {}  # one row per key: last one wins
    for hb in batch:
        number[hb.provider_id] += 1
        slot = number[hb.provider_id] % keep
        for r in hb.readings:
            rows[(hb.provider_id, slot, r.index)] = (
                hb.provider_id, slot, r.index, hb.at,
                *(getattr(r, name) for name in SAMPLE_FIELDS),
            )
    columns = ("provider_id", "slot", "gpu_index", "at", *SAMPLE_FIELDS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[3:])
    ordered = [rows[k] for k in sorted(rows)]
    if cur.is_postgres and ordered:
        types = ("text", "int4", "int4", "float8", "int4", "int8", "int4", "float8", "int8", "int8")
        cur.execute(
            f"INSERT INTO provider_samples ({', '.join(columns)}) SELECT * FROM unnest("
            + ", ".join(f"?::{t}[]" for t in types)
            + f") ON CONFLICT (provider_id, slot, gpu_index) DO UPDATE SET {updates}",
            [list(column) for column in zip(*ordered, strict=True)],
        )
        return
    for chunk in _chunks(ordered, _ROWS_PER_STATEMENT // 2):
        cur.execute(
            f"INSERT INTO provider_samples ({', '.join(columns)}) VALUES "
            + _values(len(columns), len(chunk))
            + f" ON CONFLICT (provider_id, slot, gpu_index) DO UPDATE SET {updates}",
            [v for row in chunk for v in row],
        )


@dataclass(frozen=True)
class Sample:
    """One heartbeat's readings of one provider's GPUs."""

    at: float
    readings: tuple[GpuReading, ...]


def recent_samples(views: ViewDB, provider_id: str, limit: int | None = None) -> list[Sample]:
    """The provider's last `limit` heartbeats' readings (at most what the ring keeps), oldest
    first."""
    rows = views.query(
        f"SELECT gpu_index, at, {', '.join(SAMPLE_FIELDS)} FROM provider_samples"
        " WHERE provider_id = ? ORDER BY at, gpu_index",
        (provider_id,),
    )
    by_beat: dict[float, list[GpuReading]] = {}
    for r in rows:
        by_beat.setdefault(r["at"], []).append(
            GpuReading(r["gpu_index"], *(r[name] for name in SAMPLE_FIELDS))
        )
    samples = [Sample(at, tuple(readings)) for at, readings in by_beat.items()]
    keep = views.settings.provider_samples_kept
    return samples[-min(limit or keep, keep):]


# GPU health


@dataclass(frozen=True)
class HealthChange:
    provider_id: str
    index: int
    healthy: bool
    reason: str


class HealthWatch:
    """The last known health of each GPU, so that only a change reaches the domain.

    `refresh` replaces what it knows with the read model's (another API replica may
    have recorded a change); `observe` compares a batch's readings with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._degraded: dict[tuple[str, int], str] = {}
        self._ignored: set[tuple[str, int]] = set()  # readings of GPUs the domain refused

    def refresh(self, degraded: Iterable[tuple[str, int, str]]) -> None:
        with self._lock:
            self._degraded = {(pid, index): why for pid, index, why in degraded}

    def ignore(self, provider_id: str, index: int) -> None:
        """Stop judging a GPU the provider never declared (its readings keep coming)."""
        with self._lock:
            self._ignored.add((provider_id, index))

    def observe(self, batch: Iterable[Heartbeat]) -> list[HealthChange]:
        changes = []
        with self._lock:
            for hb in batch:
                for r in hb.readings:
                    key, why = (hb.provider_id, r.index), r.trouble
                    if key in self._ignored:
                        continue
                    known = self._degraded.get(key)
                    if why and why != known:
                        self._degraded[key] = why
                        changes.append(HealthChange(hb.provider_id, r.index, False, why))
                    elif not why and known is not None:
                        del self._degraded[key]
                        changes.append(HealthChange(hb.provider_id, r.index, True, ""))
        return changes


# Liveness


@dataclass(frozen=True)
class LivenessChange:
    provider_id: str
    online: bool
    reason: str = ""


LIVENESS_SQL = (
    "SELECT p.provider_id, p.status, p.updated_at, l.last_heartbeat_at FROM providers p"
    " LEFT JOIN provider_liveness l ON l.provider_id = p.provider_id"
    " WHERE (p.status = 'online' AND (l.last_heartbeat_at IS NULL OR l.last_heartbeat_at < ?))"
    " OR (p.status IN ('offline', 'lost') AND l.last_heartbeat_at >= ?)"
)


def liveness_changes(
    rows: Iterable[Mapping[str, Any]],
    now: float,
    offline_after_s: float,
    interval_s: float,
    watching_since: float,
) -> list[LivenessChange]:
    """Who went offline (silent longer than `offline_after_s`) and who came back.

    Silence is counted from `watching_since` at the earliest: a monitor that just
    started (an API restart) gives every provider a full window to beat again.
    A provider marked offline (silent, or drained: its agent is stopping) or lost (it
    stopped answering for a job: a crash, or a machine too busy to heartbeat in time)
    comes back once it beats after its last recorded change (`updated_at`, ISO 8601): its
    agent is alive. A beat from before would put a draining agent back online, and jobs
    on it as it stops (CI saw a drained provider online again). The lost run stays in its
    reputation.
    `rows`: provider_id, status (the domain's, from the read model), last_heartbeat_at,
    and updated_at for lost ones.
    """
    changes = []
    for r in rows:
        beat = r["last_heartbeat_at"]
        if r["status"] == "online":
            silent = now - max(beat if beat is not None else -math.inf, watching_since)
            if silent > offline_after_s:
                missed = int(silent // interval_s) if interval_s > 0 else 0
                changes.append(LivenessChange(
                    r["provider_id"], False,
                    f"missed {missed} heartbeats (none for {silent:.1f}s)",
                ))
        elif r["status"] in ("offline", "lost") and beat is not None and (
            now - beat <= offline_after_s
            # only a beat after it went offline (or lost) says its agent is alive
            and beat > datetime.fromisoformat(r["updated_at"]).timestamp()
        ):
            changes.append(LivenessChange(r["provider_id"], True))
    return changes


def liveness_rows(views: ViewDB, now: float, offline_after_s: float) -> list[dict[str, Any]]:
    """The providers whose recorded status may no longer match their heartbeats."""
    cutoff = now - offline_after_s
    return views.query(LIVENESS_SQL, (cutoff, cutoff))


def degraded_gpus(views: ViewDB) -> list[tuple[str, int, str]]:
    """(provider, GPU index, why) for every GPU the read model shows degraded."""
    rows = views.query("SELECT provider_id, degraded FROM providers WHERE degraded <> '{}'")
    return [
        (r["provider_id"], int(index), why)
        for r in rows for index, why in json.loads(r["degraded"]).items()
    ]


def online_provider_ids(views: ViewDB, settings: Settings) -> set[str]:
    """Providers whose last heartbeat is recent enough to give them work.

    The same rule as the liveness monitor's (`liveness_changes`): silent for longer than
    `settings.offline_after_s` (a few missed heartbeats, not one late one) is offline.
    """
    cutoff = time.time() - settings.offline_after_s
    rows = views.query(
        "SELECT provider_id FROM provider_liveness WHERE last_heartbeat_at >= ?", (cutoff,)
    )
    return {r["provider_id"] for r in rows}
