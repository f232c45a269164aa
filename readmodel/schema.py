"""The read model's tables: the views the projector folds from the event log, and the
samples the API keeps beside them (heartbeats, sign-in failures)."""

from __future__ import annotations

from infra.db import Column, Database
from infra.settings import Settings

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tracking (
        name TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, client_id TEXT NOT NULL,
        name TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
        provider_id TEXT, attempt INTEGER NOT NULL DEFAULT 0,
        max_cost_micro BIGINT NOT NULL, cost_micro BIGINT,
        submitted_at TEXT NOT NULL, updated_at TEXT NOT NULL, queued_position BIGINT,
        outputs TEXT NOT NULL DEFAULT '[]', spec TEXT NOT NULL, last_seq INTEGER NOT NULL,
        queue TEXT NOT NULL DEFAULT 'local/default', priority INTEGER NOT NULL DEFAULT 0,
        gpus INTEGER NOT NULL DEFAULT 1, timeout_s BIGINT NOT NULL DEFAULT 0,
        allocated_at TEXT)""",
    "CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client_id, submitted_at)",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, queued_position)",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (queue, state)",
    "CREATE INDEX IF NOT EXISTS jobs_client_state ON jobs (client_id, state)",
    """CREATE TABLE IF NOT EXISTS job_events (
        job_id TEXT NOT NULL, seq INTEGER NOT NULL, notification_id BIGINT NOT NULL,
        type TEXT NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, seq))""",
    """CREATE TABLE IF NOT EXISTS providers (
        provider_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, region TEXT NOT NULL,
        status TEXT NOT NULL, price_micro BIGINT NOT NULL, gpus TEXT NOT NULL,
        reservations TEXT NOT NULL DEFAULT '{}', outcomes TEXT NOT NULL DEFAULT '[]',
        outcome_times TEXT NOT NULL DEFAULT '[]', outcome_clients TEXT NOT NULL DEFAULT '[]',
        outcome_spent TEXT NOT NULL DEFAULT '[]', outcome_outvotes TEXT NOT NULL DEFAULT '[]',
        reputation DOUBLE PRECISION NOT NULL, updated_at TEXT NOT NULL,
        runtimes TEXT NOT NULL DEFAULT '["process"]', last_seq INTEGER NOT NULL DEFAULT 0,
        status_reason TEXT NOT NULL DEFAULT '', reservation_clients TEXT NOT NULL DEFAULT '{}',
        suspended TEXT NOT NULL DEFAULT '[]', degraded TEXT NOT NULL DEFAULT '{}',
        sandbox TEXT NOT NULL DEFAULT '')""",
    """CREATE TABLE IF NOT EXISTS provider_events (
        provider_id TEXT NOT NULL, seq INTEGER NOT NULL, notification_id BIGINT NOT NULL,
        type TEXT NOT NULL, at TEXT NOT NULL, data TEXT NOT NULL,
        PRIMARY KEY (provider_id, seq))""",
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, region TEXT NOT NULL,
        operator TEXT NOT NULL, queues TEXT NOT NULL DEFAULT '{}',
        provider_ids TEXT NOT NULL DEFAULT '[]')""",
    # verified_spent_micro: what a client paid for verified work; outvotes_caused: the
    # `outvoted` outcomes its jobs caused (domain/ledger.py)
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, balance_micro BIGINT NOT NULL,
        verified_spent_micro BIGINT NOT NULL DEFAULT 0,
        outvotes_caused BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS ledger_entries (
        account TEXT NOT NULL, seq INTEGER NOT NULL, transfer_id TEXT NOT NULL,
        amount_micro BIGINT NOT NULL, balance_micro BIGINT NOT NULL, counterparty TEXT NOT NULL,
        kind TEXT NOT NULL, memo TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (account, seq))""",
    # Events the projection could not apply (readmodel/projector.py), so the others go on.
    """CREATE TABLE IF NOT EXISTS projection_set_aside (
        notification_id BIGINT PRIMARY KEY, topic TEXT NOT NULL, error TEXT NOT NULL)""",
    # Not read models: heartbeats are samples, not events (readmodel/telemetry.py). The liveness
    # row holds a provider's last heartbeat and how many it sent; provider_samples is a ring
    # of its last `provider_samples_kept` heartbeats' GPU readings (slot = beat number mod N).
    """CREATE TABLE IF NOT EXISTS provider_liveness (
        provider_id TEXT PRIMARY KEY, last_heartbeat_at DOUBLE PRECISION NOT NULL,
        telemetry TEXT NOT NULL DEFAULT '[]', beats BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS provider_samples (
        provider_id TEXT NOT NULL, slot INTEGER NOT NULL, gpu_index INTEGER NOT NULL,
        at DOUBLE PRECISION NOT NULL, utilization_pct INTEGER, memory_used_mb BIGINT,
        temperature_c INTEGER, power_w DOUBLE PRECISION, ecc_errors BIGINT, xid_errors BIGINT,
        PRIMARY KEY (provider_id, slot, gpu_index))""",
    # Not a read model either: wrong passwords per email, for every API process
    # (api/auth.py SignInThrottle); rows leave once they are older than the window.
    """CREATE TABLE IF NOT EXISTS sign_in_failures (
        email TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, source TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX IF NOT EXISTS sign_in_failures_email ON sign_in_failures (email, at)",
    # Sign-ups per source address, for every API process (api/auth.py SignUpThrottle);
    # rows leave once they are older than its window.
    "CREATE TABLE IF NOT EXISTS sign_ups (source TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sign_ups_source ON sign_ups (source, at)",
]

# Columns added to tables that are not rebuilt from the log: (table, column, declaration).
COLUMNS_ADDED: list[Column] = [("provider_liveness", "beats", "BIGINT NOT NULL DEFAULT 0"),
                               ("sign_in_failures", "source", "TEXT NOT NULL DEFAULT ''")]

# The read models proper: derived from the log, dropped and rebuilt when their shape changes.
VIEW_TABLES = (
    "jobs", "job_events", "providers", "provider_events", "accounts", "ledger_entries", "nodes",
    "projection_set_aside",
)


class ViewDB(Database):
    """One connection to the read-model database, its tables ensured."""

    def __init__(self, settings: Settings):
        super().__init__(settings, SCHEMA, COLUMNS_ADDED)

    def reset_views(self) -> None:
        """Drop and recreate every read-model table (their tracking is the caller's)."""
        with self.transaction() as cur:
            for table in VIEW_TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in SCHEMA:
                cur.execute(statement)
