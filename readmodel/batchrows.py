"""The view rows one batch of the projector has read or written (`BatchRows`): an
aggregate's next event in the same batch needs no query, each changed row is written once,
new and appended rows go in with one COPY (PostgreSQL) or executemany (SQLite) a table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from domain.reputation import last_scored_at, reputation
from infra.db import Cursor

# A provider row's columns that hold JSON, kept parsed while a batch folds.
PROVIDER_JSON = ("reservations", "reservation_clients", "outcomes", "outcome_times",
                 "outcome_clients", "outcome_spent", "outcome_outvotes", "suspended",
                 "degraded")


@dataclass
class BatchRows:
    """The view rows one batch has read or written, by aggregate id: an aggregate's next
    event in the same batch needs no query. Valid for one transaction only (another
    runner may apply the next batch)."""

    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger_seq: dict[str, int] = field(default_factory=dict)  # by account name
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Column changes not yet written, by (table, key column, key): one UPDATE per row and
    # batch, however many of the batch's events changed it (one executemany for the rows
    # of a table whose changes have the same columns).
    pending: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # The rows of `pending` the batch created: each inserted once, with its changes, when
    # the batch ends (one COPY or executemany per table and columns).
    created: set[tuple[str, str, str]] = field(default_factory=set)
    # Rows to append (event histories, ledger entries), by table and columns: one COPY
    # (PostgreSQL) or executemany (SQLite) each.
    appends: dict[tuple[str, tuple[str, ...]], list[tuple[Any, ...]]] = field(
        default_factory=dict)
    changed_providers: set[str] = field(default_factory=set)  # their JSON columns to write

    def insert(self, table: str, key_column: str, key: str, values: dict[str, Any]) -> None:
        """A new row (its columns not in `values` take their defaults)."""
        self.pending[(table, key_column, key)] = values
        self.created.add((table, key_column, key))

    def update(self, table: str, key_column: str, key: str, changes: dict[str, Any]) -> None:
        self.pending.setdefault((table, key_column, key), {}).update(changes)

    def append(self, table: str, columns: tuple[str, ...], row: tuple[Any, ...]) -> None:
        self.appends.setdefault((table, columns), []).append(row)

    def write_changes(self, cur: Cursor) -> None:
        for agg in self.changed_providers:  # their lists, written once, and the score
            kept = self.providers[agg]
            outcomes, times = kept["outcomes"], kept["outcome_times"]
            clients, spent = kept["outcome_clients"], kept["outcome_spent"]
            outvotes = kept["outcome_outvotes"]
            # The score as of the latest scored outcome (an `outvoted` that does not count
            # moves nothing); readers decay it to their own moment (domain/reputation.py)
            # from the outcomes, their times, clients, clients' spend and clients' earlier
            # `outvoted` outcomes kept beside it.
            pairs = list(zip(outcomes, times, strict=True))
            score = reputation(pairs, last_scored_at(pairs, 0.0, clients, spent, outvotes),
                               clients, spent, outvotes)
            self.update("providers", "aggregate_id", agg, {
                **{column: json.dumps(kept[column], sort_keys=column == "degraded")
                   for column in PROVIDER_JSON},
                "reputation": score.score,
            })
        self.changed_providers.clear()
        updates: dict[tuple[str, str, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        for (table, key_column, key), changes in self.pending.items():
            if (table, key_column, key) in self.created:
                self.append(table, tuple(changes), tuple(changes.values()))
            else:
                updates.setdefault((table, key_column, tuple(changes)), []).append(
                    (*changes.values(), key))
        self.pending.clear()
        self.created.clear()
        for (table, key_column, columns), rows in updates.items():
            sets = ", ".join(f"{column} = ?" for column in columns)
            cur.executemany(f"UPDATE {table} SET {sets} WHERE {key_column} = ?", rows)

    def write_appends(self, cur: Cursor) -> None:
        """The new rows and appended ones (after `write_changes`, which adds the new rows)."""
        for (table, columns), rows in self.appends.items():
            cur.insert_rows(table, columns, rows)
        self.appends.clear()
