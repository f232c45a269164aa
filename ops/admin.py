"""Operator commands that work on the stores directly (no API needed)."""

from __future__ import annotations

import time
from typing import Any

from domain.app_identity import Identity
from domain.application import Network
from domain.identity import ROLES, UserView
from domain.reputation import last_scored_at, reputation
from infra.settings import Settings
from readmodel.projector import Projector
from readmodel.schema import VIEW_TABLES, ViewDB

MAX_GRANT_MICRO = 10**15  # a billion credits: far above any real grant


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


def recompute_reputation(settings: Settings, as_of: float | None = None) -> dict[str, Any]:
    """Every provider's score recomputed from the log alone, next to the ones recorded.

    All scores are taken as of one moment (`as_of`, now by default), since they decay
    with age. The read model keeps the score as of the provider's latest scored outcome
    (not an `outvoted` one that does not count), so that one is recomputed as of that time.
    Each outcome's client, that client's verified spend and the `outvoted` outcomes its
    jobs had caused before, which say whether an `outvoted` counts, are read from the log
    too (domain/reputation.py).
    """
    as_of = time.time() if as_of is None else as_of
    app = Network(env=settings.eventsourcing_env())
    outcomes: dict[str, list[tuple[str, float]]] = {}
    clients: dict[str, list[str]] = {}
    spent: dict[str, list[int]] = {}
    outvotes: dict[str, list[int]] = {}
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
                outcomes.setdefault(provider, []).append(
                    (event.outcome, event.at)  # type: ignore[attr-defined]
                )
                clients.setdefault(provider, []).append(event.client_id)  # type: ignore[attr-defined]
                spent.setdefault(provider, []).append(
                    event.client_spent_micro  # type: ignore[attr-defined]
                )
                outvotes.setdefault(provider, []).append(
                    event.client_outvotes_before  # type: ignore[attr-defined]
                )
        position = batch[-1].id
    views = ViewDB(settings)
    try:
        shown = {r["provider_id"]: r["reputation"]
                 for r in views.query("SELECT provider_id, reputation FROM providers")}
    finally:
        views.close()
    report = []
    for provider in sorted(names.values()):
        pairs, of = outcomes.get(provider, []), clients.get(provider, [])
        paid, before = spent.get(provider, []), outvotes.get(provider, [])
        now = reputation(pairs, as_of, of, paid, before)
        recorded = app.provider(provider).reputation_at(as_of).score
        as_shown = reputation(pairs, last_scored_at(pairs, as_of, of, paid, before), of, paid,
                              before).score
        report.append({
            "provider_id": provider, "outcomes": len(pairs),
            "recomputed": now.score, "recorded": recorded, "shown": shown.get(provider),
            "confidence": now.confidence, "probation": now.probation,
            "components": now.weighted,
            "matches": abs(now.score - recorded) < 1e-12
            and abs(as_shown - shown.get(provider, -1.0)) < 1e-9,
        })
    return {"providers": report, "all_match": all(r["matches"] for r in report)}


def create_admin(
    settings: Settings, email: str, password: str, roles: tuple[str, ...] = ROLES
) -> UserView:
    """An admin account on the stores directly (no API needed): every role by default.
    An existing account keeps its password and gains the roles it lacked."""
    app = Identity(env=settings.eventsourcing_env())
    return app.create_user(email, password, list(roles), time.time())


def grant_credits(settings: Settings, client_id: str, amount_micro: int, grant_id: str) -> int:
    """Credits for a client, on the stores directly: a deposit recorded in the ledger
    (`deposit:grant:<grant_id>:<client_id>`, once however often it is run), never a
    balance set by hand. `gpgpu up` grants its dev account this way, and the end-to-end
    tests their accounts, since sign-up gives nothing by default. The new balance."""
    if not 0 < amount_micro <= MAX_GRANT_MICRO:
        raise ValueError(f"amount_micro: must be between 1 and {MAX_GRANT_MICRO}")
    app = Network(env=settings.eventsourcing_env())
    return app.deposit(client_id, amount_micro, f"grant:{grant_id}:{client_id}")


def revoke_role(settings: Settings, email: str, role: str) -> UserView:
    """Take a role from an account, on the stores directly; a running API notices within
    GPGPU_AUTH_CACHE_TTL_S (an admin's revokeRole through the API, at once)."""
    return Identity(env=settings.eventsourcing_env()).revoke_role(email, role)


def reset_password(settings: Settings, email: str) -> str:
    """A temporary password for a locked-out account, on the stores directly (an admin who
    lost theirs too can run it); every session of the account ends."""
    return Identity(env=settings.eventsourcing_env()).reset_password(email, time.time())
