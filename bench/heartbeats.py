"""Heartbeat ingest: how many provider heartbeats per second the read-model database takes.

`measure` is a function for other benches (it prints nothing): `providers`
simulated providers with `gpus` GPUs each beat in turn, `batch` heartbeats per
`ingest_heartbeats` call (the API gathers the heartbeats that arrive together
into one such call), for `seconds`. Every provider beats once, untimed, first,
so the timed part is the steady state (rows updated, the sample ring full).

`python -m bench.heartbeats [--seconds S] [--providers N] [--batch B]` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from infra.settings import Settings
from readmodel.schema import ViewDB
from readmodel.telemetry import GpuReading, Heartbeat, ingest_heartbeats

PREFIX = "bench-hb-"


def _beat(provider: int, gpus: int, at: float) -> Heartbeat:
    return Heartbeat(
        f"{PREFIX}{provider}",
        at,
        tuple(
            GpuReading(i, utilization_pct=(provider + i) % 100, memory_used_mb=40_000 + i,
                       temperature_c=60 + i, power_w=350.5, ecc_errors=0, xid_errors=0)
            for i in range(gpus)
        ),
    )


def measure(
    views: ViewDB,
    providers: int = 10_000,
    seconds: float = 5.0,
    gpus: int = 2,
    batch: int = 100,
    cleanup: bool = True,
) -> float:
    """Heartbeats per second ingested into `views` (its database: SQLite or PostgreSQL)."""
    beats = [_beat(p, gpus, 0.0) for p in range(providers)]
    try:
        for start in range(0, providers, batch):  # warm-up: every provider's first beat
            ingest_heartbeats(views, beats[start : start + batch])
        done, cursor = 0, 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            chunk = beats[cursor : cursor + batch]
            cursor = (cursor + batch) % providers
            now = time.time()
            ingest_heartbeats(views, [Heartbeat(b.provider_id, now, b.readings) for b in chunk])
            done += len(chunk)
        return done / elapsed
    finally:
        if cleanup:
            with views.transaction() as cur:
                for table in ("provider_liveness", "provider_samples"):
                    cur.execute(f"DELETE FROM {table} WHERE provider_id LIKE ?", (PREFIX + "%",))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heartbeats", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--providers", type=int, default=10_000)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    views = ViewDB(settings)
    try:
        rate = measure(views, args.providers, args.seconds, args.gpus, args.batch)
    finally:
        views.close()
    print(json.dumps({
        "bench": "heartbeats", "store": settings.event_store, "providers": args.providers,
        "gpus_per_provider": args.gpus, "batch": args.batch,
        "heartbeats_per_s": round(rate, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
