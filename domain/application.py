"""The Network application: every command the control plane issues, as events.

One event store, the commands grouped by context: jobs and the ledger (domain/app_jobs.py),
the market of nodes and providers (domain/app_market.py), canaries
(domain/app_canaries.py) and identity (domain/app_identity.py, an application of its own).
"""

from __future__ import annotations

from domain.app_base import CONFLICT_RETRIES, NAME
from domain.app_canaries import Canaries
from domain.app_identity import Identity
from domain.app_jobs import Admission, Jobs, Payment, SettlementFigures
from domain.app_market import Market

__all__ = ["CONFLICT_RETRIES", "Admission", "Identity", "Network", "Payment",
           "SettlementFigures"]


class Network(Jobs, Market, Canaries):
    """Every command of the network (Market brings Identity)."""

    name = NAME  # eventsourcing names an application after its class otherwise
