"""The Network application: every command the control plane issues, as events.

One event store, the commands grouped by context: jobs and the ledger (domain/app_jobs.py),
the market of nodes and providers (domain/app_market.py) and canaries
(domain/app_canaries.py). Identity (domain/app_identity.py) is an application of its own
over the same store, which the API uses directly (`Identity.beside(network)`); the
Network only reads who owns which provider (`Ownership`), to place a job's runs.
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
    """Every command of the network but identity's (Market reads who owns a provider)."""

    name = NAME  # eventsourcing names an application after its class otherwise
