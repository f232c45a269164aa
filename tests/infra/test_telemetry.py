"""Heartbeats as samples: a bounded ring per provider, liveness, GPU health; on SQLite and
PostgreSQL by the same test code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.heartbeats import measure
from infra.settings import Settings
from readmodel.schema import ViewDB
from readmodel.telemetry import (
    GpuReading,
    HealthChange,
    HealthWatch,
    Heartbeat,
    LivenessChange,
    ingest_heartbeats,
    liveness_changes,
    online_provider_ids,
    parse_readings,
    recent_samples,
)
from tests.support.stores import store_settings


@pytest.fixture(params=["sqlite", "postgres"])
def views(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ViewDB]:
    with store_settings(request.param, tmp_path) as settings:
        db = ViewDB(settings.model_copy(update={"provider_samples_kept": 5}))
        try:
            yield db
        finally:
            db.close()


def beat(provider: str, at: float, *readings: GpuReading) -> Heartbeat:
    return Heartbeat(provider, at, readings)


def gpu(index: int, util: int = 50, ecc: int | None = 0, xid: int | None = 0) -> GpuReading:
    return GpuReading(index, utilization_pct=util, memory_used_mb=1024, temperature_c=60,
                      power_w=300.5, ecc_errors=ecc, xid_errors=xid)


def test_the_store_keeps_only_the_last_n_heartbeats_per_provider(views: ViewDB) -> None:
    t0 = 1_700_000_000.0
    for n in range(12):  # in batches of various sizes, one provider twice in a batch
        ingest_heartbeats(views, [beat("p1", t0 + 2 * n, gpu(0, n), gpu(1, n)),
                                  beat("p2", t0 + 2 * n, gpu(0, n)),
                                  beat("p1", t0 + 2 * n + 1, gpu(0, n + 50), gpu(1, n + 50))])
    rows = views.query("SELECT provider_id, COUNT(*) AS n FROM provider_samples"
                       " GROUP BY provider_id ORDER BY provider_id")
    assert rows == [{"provider_id": "p1", "n": 5 * 2}, {"provider_id": "p2", "n": 5}]

    samples = recent_samples(views, "p1")
    assert [s.at - t0 for s in samples] == [19, 20, 21, 22, 23]  # p1 beat at 2n and 2n + 1
    last = samples[-1]
    assert [r.index for r in last.readings] == [0, 1]
    assert last.readings[0] == gpu(0, 11 + 50)
    assert [s.at for s in recent_samples(views, "p1", limit=2)] == [t0 + 22, t0 + 23]

    (live,) = views.query("SELECT * FROM provider_liveness WHERE provider_id = 'p1'")
    assert live["beats"] == 24
    assert live["last_heartbeat_at"] == t0 + 23


def test_a_heartbeat_without_telemetry_keeps_the_provider_alive(views: ViewDB) -> None:
    settings = views.settings
    now = time.time()
    ingest_heartbeats(views, [beat("quiet", now), beat("gone", now - 60)])
    assert online_provider_ids(views, settings) == {"quiet"}
    assert views.query("SELECT COUNT(*) AS n FROM provider_samples") == [{"n": 0}]


def test_one_late_heartbeat_is_not_death(views: ViewDB) -> None:
    interval = views.settings.provider_heartbeat_interval_s
    assert views.settings.provider_missed_heartbeats == 3
    now = time.time()
    ingest_heartbeats(views, [
        beat("late", now - 2 * interval),    # one beat missed, one late: still online
        beat("dead", now - 3.6 * interval),  # three missed
    ])
    assert online_provider_ids(views, views.settings) == {"late"}


def test_an_explicit_offline_after_overrides_the_missed_heartbeats() -> None:
    assert Settings(provider_heartbeat_interval_s=2).offline_after_s == 7.0
    assert Settings(provider_heartbeat_interval_s=2, provider_offline_after_s=20).offline_after_s \
        == 20


def test_readings_are_checked_field_by_field() -> None:
    assert parse_readings(None) == ()
    assert parse_readings([{"index": 0, "power_w": 12.5, "ecc_errors": None, "extra": 1}]) == (
        GpuReading(0, power_w=12.5),
    )
    for raw, message in [
        ({"index": 0}, "telemetry: must be a list of GPU readings"),
        ([{"utilization_pct": 5}],
         "telemetry.0.index: must be a GPU index, a whole number from 0 to 1023"),
        ([{"index": 0}, {"index": 1, "ecc_errors": -1}],
         "telemetry.1.ecc_errors: must be at least 0 errors (or null)"),
        ([{"index": 0, "temperature_c": 1.5}],
         "telemetry.0.temperature_c: must be a whole number of °C (or null)"),
        # Each number at its bound's maximum + 1 (domain/limits.py)
        ([{"index": 2**63}], "telemetry.0.index: must be at most 1023"),
        ([{"index": 1024}], "telemetry.0.index: must be at most 1023"),
        ([{"index": 0, "utilization_pct": 101}],
         "telemetry.0.utilization_pct: must be at most 100 % (or null)"),
        ([{"index": 0, "memory_used_mb": 4 * 1024 * 1024 + 1}],
         "telemetry.0.memory_used_mb: must be at most 4194304 MiB (or null)"),
        ([{"index": 0, "temperature_c": 1001}],
         "telemetry.0.temperature_c: must be at most 1000 °C (or null)"),
        ([{"index": 0, "power_w": 100_000.5}],
         "telemetry.0.power_w: must be at most 100000 W (or null)"),
        ([{"index": 0, "xid_errors": 10**12 + 1}],
         "telemetry.0.xid_errors: must be at most 1000000000000 errors (or null)"),
        ([{"index": 0, "power_w": float("inf")}],
         "telemetry.0.power_w: must be a finite number of W (or null)"),
        ([{"index": 0}, {"index": 0}], "telemetry: two readings for the same GPU index"),
    ]:
        with pytest.raises(ValueError) as caught:
            parse_readings(raw)
        assert str(caught.value) == message


def test_only_a_change_of_health_is_reported() -> None:
    watch = HealthWatch()
    assert watch.observe([beat("p", 1, gpu(0), gpu(1))]) == []
    assert watch.observe([beat("p", 2, gpu(0, ecc=2), gpu(1))]) == [
        HealthChange("p", 0, False, "ECC errors: 2")
    ]
    assert watch.observe([beat("p", 3, gpu(0, ecc=2), gpu(1))]) == []
    assert watch.observe([beat("p", 4, gpu(0, ecc=2), gpu(1, xid=1, ecc=None))]) == [
        HealthChange("p", 1, False, "Xid errors: 1")
    ]
    assert watch.observe([beat("p", 5, gpu(0, ecc=3, xid=1), gpu(1))]) == [
        HealthChange("p", 0, False, "ECC errors: 3; Xid errors: 1"),
        HealthChange("p", 1, True, ""),
    ]
    # What another replica recorded (from the read model) is what this one knows next.
    watch.refresh([("p", 1, "Xid errors: 4")])
    assert watch.observe([beat("p", 6, gpu(0), gpu(1))]) == [HealthChange("p", 1, True, "")]
    # A GPU the domain does not know (the provider never declared it) is not judged again.
    watch.ignore("p", 9)
    assert watch.observe([beat("p", 7, gpu(9, ecc=1))]) == []


def test_liveness_changes_with_hysteresis() -> None:
    now, after, interval = 1000.0, 3.5, 1.0

    def rows(status: str, beat_at: float | None,
             changed_at: float = now - 1.0) -> list[dict[str, object]]:
        return [{"provider_id": "p", "status": status, "last_heartbeat_at": beat_at,
                 "updated_at": datetime.fromtimestamp(changed_at, UTC).isoformat()}]

    assert liveness_changes(rows("online", now - 2.0), now, after, interval, 0) == []
    assert liveness_changes(rows("online", now - 3.4), now, after, interval, 0) == []
    assert liveness_changes(rows("online", now - 4.0), now, after, interval, 0) == [
        LivenessChange("p", False, "missed 4 heartbeats (none for 4.0s)")
    ]
    assert liveness_changes(rows("online", None), now, after, interval, 0)[0].online is False
    # A monitor that just started gives everyone a full window first.
    assert liveness_changes(rows("online", now - 60), now, after, interval, now - 1) == []
    assert liveness_changes(rows("offline", now - 60), now, after, interval, 0) == []
    assert liveness_changes(rows("offline", now - 0.5), now, after, interval, 0) == [
        LivenessChange("p", True)
    ]
    # Drained (its agent stopped beating, then said it is stopping): an earlier beat, however
    # recent, does not put it back online; a beat after does (its agent started again).
    assert liveness_changes(rows("offline", now - 1.5), now, after, interval, 0) == []
    # Lost with a run: back once it beats after that was recorded, not on an older beat.
    assert liveness_changes(rows("lost", now - 0.5), now, after, interval, 0) == [
        LivenessChange("p", True)
    ]
    assert liveness_changes(rows("lost", now - 1.5), now, after, interval, 0) == []
    assert liveness_changes(rows("lost", now - 60, now - 70), now, after, interval, 0) == []


def test_the_bench_measures_and_prints_nothing(
    views: ViewDB, capsys: pytest.CaptureFixture[str]
) -> None:
    rate = measure(views, providers=50, seconds=0.2, batch=10)
    assert rate > 0
    assert capsys.readouterr() == ("", "")
    assert views.query("SELECT COUNT(*) AS n FROM provider_liveness") == [{"n": 0}]
