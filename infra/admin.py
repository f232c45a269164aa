"""Operator commands that work on the stores directly (no API needed)."""

from __future__ import annotations

import time
from typing import Any

from domain.application import Network
from domain.projection import Projector
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
