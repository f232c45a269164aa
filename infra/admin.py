"""Operator commands that work on the stores directly (no API needed)."""

from __future__ import annotations

import time
from typing import Any

from domain.application import Network
from domain.projection import Projector
from domain.reputation import reputation_score
from infra.db import VIEW_TABLES, ViewDB
from infra.settings import Settings


def rebuild_projections(settings: Settings) -> dict[str, Any]:
    """Drop every read model and fold the whole event log again."""
    views = ViewDB(settings)
    try:
        projector = Projector(Network(env=settings.eventsourcing_env()), views)
        started = time.perf_counter()
        events = projector.rebuild()
        seconds = time.perf_counter() - started
        counts = {t: views.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"] for t in VIEW_TABLES}
    finally:
        views.close()
    return {"events": events, "seconds": round(seconds, 3), "rows": counts}


def recompute_reputation(settings: Settings) -> dict[str, Any]:
    """Every provider's score recomputed from the log alone, next to the ones recorded."""
    app = Network(env=settings.eventsourcing_env())
    outcomes: dict[str, list[str]] = {}
    names: dict[str, str] = {}  # aggregate id -> provider id
    position = 0
    while batch := app.recorder.select_notifications(
        start=position, limit=1000, inclusive_of_start=False
    ):
        for n in batch:
            event = app.mapper.to_domain_event(n)
            kind = type(event).__qualname__
            if kind == "Provider.ProviderRegistered":
                names[str(event.originator_id)] = event.provider_id  # type: ignore[attr-defined]
            elif kind == "Provider.ReputationRecorded":
                provider = names[str(event.originator_id)]
                outcomes.setdefault(provider, []).append(event.outcome)  # type: ignore[attr-defined]
        position = batch[-1].id
    views = ViewDB(settings)
    try:
        shown = {r["provider_id"]: r["reputation"]
                 for r in views.query("SELECT provider_id, reputation FROM providers")}
    finally:
        views.close()
    report = []
    for provider in sorted(names.values()):
        recomputed = reputation_score(outcomes.get(provider, []))
        recorded = app.provider(provider).reputation
        report.append({
            "provider_id": provider, "outcomes": len(outcomes.get(provider, [])),
            "recomputed": recomputed, "recorded": recorded, "shown": shown.get(provider),
            "matches": abs(recomputed - recorded) < 1e-12
            and abs(recomputed - shown.get(provider, -1.0)) < 1e-12,
        })
    return {"providers": report, "all_match": all(r["matches"] for r in report)}
