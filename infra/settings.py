"""All configuration in one place, read from GPGPU_* environment variables."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.signing import SigningKeyError, load_or_create_key, parse_signing_key
from infra.storage import ObjectStore, build_store
from infra.tracing import check as check_tracing

if TYPE_CHECKING:
    from temporalio.converter import DataConverter


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GPGPU_", extra="ignore")

    home: Path = Path(".gpgpu")
    # Event store: "sqlite" (file under home), "postgres" (psycopg 3) or "memory" (tests only).
    event_store: Literal["sqlite", "postgres", "memory"] = "sqlite"
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_dbname: str = "test"
    pg_user: str = "postgres"
    pg_password: str = ""
    pg_schema: str = ""

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_port: int = 8233
    # mTLS to Temporal's frontend (README, "Production"): the CA that signed the server's
    # certificate, and this control-plane service's own certificate and key (PEM files).
    # Only the API and the control worker connect; no provider ever has these.
    temporal_tls_ca: Path | None = None
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_server_name: str | None = None
    # Every payload the network gives Temporal is encrypted (infra/payload_codec.py):
    # comma-separated AES-256 keys, 64 hex digits each; the first encrypts, all decrypt
    # (rotation: put a new key first, drop an old one once no open workflow needs it).
    # Unset on the embedded network (SQLite): made once under home (temporal-payload.key,
    # 0600). With PostgreSQL (production, several machines) it must be set, the same on
    # the API and every control worker; a process without it refuses to start.
    temporal_payload_keys: str | None = Field(default=None, repr=False)
    # The key that signs storage grants (infra/signing.py): the control worker signs them,
    # the API signs renewals and checks them all. 64 hex digits. Unset on the embedded
    # network (SQLite): made once under home (signing.key, 0600). With PostgreSQL
    # (production: the API and the control workers on machines of their own) it must be
    # set, the same on all of them; a process without it refuses to start.
    signing_key: str | None = Field(default=None, repr=False)
    # The control worker's task queue; JobWorkflow runs its control activities there too.
    control_task_queue: str = "control"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Where providers and clients reach the API (used in presigned storage URLs).
    api_url: str = "http://127.0.0.1:8000"

    # Client storage: "filesystem" (under home/storage) or "s3" (one bucket, a prefix per client).
    storage: Literal["filesystem", "s3"] = "filesystem"
    s3_endpoint: str | None = None  # None: AWS; e.g. http://127.0.0.1:7480 for Ceph RGW
    s3_bucket: str = "gpgpu"
    s3_access_key: str | None = None  # None: boto3's credential chain (env, IAM role)
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    # Bytes each client may store, every byte counted (its uploads, its jobs' outputs and
    # checkpoints); None: no limit. One object (an upload, an output) may hold at most
    # max_object_bytes; any other request body at most max_request_bytes (api/body_limit.py).
    storage_quota_bytes: int | None = Field(default=10 << 30, ge=0, le=1 << 50)
    max_object_bytes: int = Field(default=4 << 30, ge=1, le=64 << 30)
    max_request_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    # Storage grants (infra/signing.py) expire within this many seconds; the storage
    # endpoint refuses one whose deadline is further away, whatever its signature. A run
    # longer than this renews its grants while it is live: a POST to the grant, with the
    # provider's own key (api/storage.py renew_grant).
    grant_max_s: Annotated[int, Field(ge=30, le=3600)] = 900

    # Money: integer micro-credits. A new client account is opened with this deposit; none by
    # default, so that sign-ups are no source of free GPU time (`gpgpu up` and the tests
    # grant their accounts credits through the ledger: ops/admin.py grant_credits).
    starting_balance_micro: int = Field(default=0, ge=0, le=10**15)
    protocol_fee_bps: int = 500
    # Floods (api/jobs.py, domain/identity.py): the jobs one client may have that have not
    # ended (submitted, queued, running...), counted by every API process alike from the
    # read model; and the provider ids one account may own (a claim is an event, so every
    # process agrees). Neither is reached by a real user; both bound what one free account
    # can make the network carry.
    max_live_jobs_per_client: int = Field(default=1000, ge=1, le=1_000_000)
    # ... and jobs one client may submit in a minute (recorded, each starts a workflow).
    max_submissions_per_client_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    max_providers_per_account: int = Field(default=64, ge=1, le=10_000)

    # Liveness: the agents' heartbeat interval. A provider is offline once it missed
    # `provider_missed_heartbeats` of them (see `offline_after_s`); this overrides that.
    provider_heartbeat_interval_s: float = 5.0
    provider_offline_after_s: float | None = None
    # How long a provider may go unheard, while the network can hear (an API is up), on a
    # GPU step it took before it is lost.
    gpu_activity_heartbeat_timeout_s: float = Field(default=10.0, ge=1.0, le=600.0)
    # How long the network's own outages (its API, control worker or Temporal away) are
    # borne before a GPU step is given up all the same (workflows/steps.py gpu_step).
    gpu_outage_grace_s: float = Field(default=60.0, ge=0.0, le=3600.0)
    # How long a GPU step whose workflow was reset goes on for the new run to take it over
    # (api/dispatch.py); past it the step stops, and the new run runs a fresh attempt.
    gpu_adopt_grace_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    # How long a GPU-side activity may wait in a provider's queue before it is lost.
    gpu_schedule_to_start_timeout_s: float = 30.0
    max_provider_attempts: int = 3
    # The network's own replicated checks, at a rate that falls as a provider earns trust.
    adaptive_checks: bool = True
    # How long the network's own check run waits for a GPU on an independent provider
    # before it is skipped (CheckSkipped) and the job settles on the checks it had.
    check_wait_s: float = Field(default=60.0, gt=0, le=3600)
    # argon2id's cost for passwords (domain/identity.py Passwords): passes and KiB of memory
    # per hash. The default is RFC 9106's second profile (3 passes over 64 MiB, ~0.2 CPU-s a
    # hash here); OWASP's floor is 2 passes over 19 MiB. Hashes made at another cost are made
    # again at this one at their owner's next sign-in. The test suite sets the least.
    password_hash_time_cost: int = Field(default=3, ge=1, le=10)
    password_hash_memory_kib: int = Field(default=64 << 10, ge=1024, le=1 << 20)
    # Commands that hash a password (sign-up, sign-in, a new password) at once in one API
    # process, and how long one waits for its turn before it is refused (api/hashing.py).
    password_hash_concurrency: int = Field(default=2, ge=1, le=64)
    password_hash_wait_s: float = Field(default=5.0, gt=0, le=60)
    # How long a client's further replica, tie-break or verifier run waits for GPUs once
    # the job holds GPUs (or has finished runs), and a run that a provider failed waits for
    # another: then the job fails, its escrow refunded.
    replica_wait_s: float = Field(default=300.0, gt=0, le=86400)
    # How often the control worker looks for jobs whose workflow closed without ending
    # them (an operator's `temporal workflow terminate`) and ends them, refunded.
    sweep_interval_s: float = Field(default=30.0, gt=0, le=3600)
    # Known-answer canary jobs after a provider's accepted runs, at its canary rate
    # (domain/verification.py); the override fixes the rate (tests), the delay spreads them.
    canaries: bool = True
    canary_rate_override: float | None = Field(default=None, ge=0.0, le=1.0)
    canary_max_delay_s: float = 60.0
    # Container-only providers get the shell canary in this image (sh and sha256sum); None:
    # they get no canaries (a provider never pulls an image it was not given).
    canary_image: str | None = None
    # Heartbeats a provider may miss before it counts as offline (one late beat is not death).
    provider_missed_heartbeats: int = 3
    # Telemetry samples (heartbeats) kept per provider for its charts; older ones are overwritten.
    provider_samples_kept: int = 120
    # Job checkpoints (worker_gpu/checkpoint.py): a larger checkpoint/ is not uploaded (the
    # job goes on, its log says why); the agent looks for changes every interval.
    checkpoint_max_bytes: int = Field(default=1 << 30, ge=0)
    checkpoint_max_files: int = Field(default=16, ge=1, le=1000)
    checkpoint_interval_s: float = Field(default=5.0, gt=0)
    # Service logs: "text" for people, "json" for log pipelines (one object per line with the
    # job id; infra/logs.py).
    log_format: Literal["text", "json"] = "text"
    # Traces (infra/tracing.py): "off", "otlp" (to OTEL_EXPORTER_OTLP_ENDPOINT) or
    # "file:/path/spans.jsonl" (one JSON line per span; processes may share the file).
    tracing: Annotated[str, AfterValidator(check_tracing)] = "off"
    # Accounts (domain/identity.py): how long a sign-in lasts; how long the API trusts what
    # it found for a token (a revoked key or ended session stops working within this).
    session_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    auth_cache_ttl_s: float = Field(default=5.0, ge=0)
    # Wrong passwords from one address (any emails) in 5 minutes before it must wait; one
    # email is locked after 5 (api/auth.py SignInThrottle).
    sign_in_max_failures_per_address: int = Field(default=20, ge=1, le=10_000)
    # Accounts one source address may sign up in an hour (api/auth.py SignUpThrottle).
    sign_ups_per_address: int = Field(default=20, ge=1, le=1_000_000)
    # Live GraphQL subscriptions one account may hold open at once (per API process).
    max_subscriptions_per_account: int = Field(default=32, ge=1, le=10_000)
    # ... and all accounts together, and open websockets: accounts are free to open, so
    # these bound what one API process holds (each subscription about 60 KiB, each
    # websocket about 35 KiB: README, Performance) whoever opens them.
    max_subscriptions_per_process: int = Field(default=10_000, ge=1, le=1_000_000)
    max_websockets_per_process: int = Field(default=20_000, ge=1, le=1_000_000)
    # ... of which one source address may hold (a NAT's many people; behind a proxy, the
    # proxy's address: raise it there, and bound per address at the proxy).
    max_websockets_per_address: int = Field(default=200, ge=1, le=1_000_000)
    # What a provider agent (and the SDK) sends as `Authorization: Bearer`: an API key.
    api_key: str | None = None
    # Set, GET /metrics wants `Authorization: Bearer <it>` (Prometheus: `authorization:`
    # `credentials:`); unset, /metrics is open (scrape it from inside the network).
    metrics_token: str | None = None

    @property
    def offline_after_s(self) -> float:
        """Silence after which a provider is offline: `provider_missed_heartbeats` intervals,
        plus half an interval for a beat that is merely late; or the explicit override."""
        if self.provider_offline_after_s is not None:
            return self.provider_offline_after_s
        return self.provider_heartbeat_interval_s * (self.provider_missed_heartbeats + 0.5)

    def object_store(self) -> ObjectStore:
        return build_store(
            self.storage, root=self.storage_root, s3_endpoint=self.s3_endpoint,
            s3_bucket=self.s3_bucket, s3_access_key=self.s3_access_key,
            s3_secret_key=self.s3_secret_key, s3_region=self.s3_region,
            quota_bytes=self.storage_quota_bytes,
        )

    @property
    def events_path(self) -> Path:
        return self.home / "events.db"

    @property
    def views_path(self) -> Path:
        return self.home / "views.db"

    @property
    def storage_root(self) -> Path:
        return self.home / "storage"

    @cached_property
    def signing_secret(self) -> bytes:
        """Secret for presigned storage URLs: GPGPU_SIGNING_KEY, or (embedded network only)
        made once and kept under home; SigningKeyError says what is missing."""
        if self.signing_key and self.signing_key.strip():
            return parse_signing_key(self.signing_key)
        if self.event_store == "postgres":
            raise SigningKeyError(
                "GPGPU_SIGNING_KEY is not set: with GPGPU_EVENT_STORE=postgres (production)"
                " the API and every control worker need the same key to sign and check"
                " storage grants (make one with: python -c 'import secrets;"
                " print(secrets.token_hex(32))')"
            )
        return load_or_create_key(self.home / "signing.key")

    @cached_property
    def payload_keys(self) -> list[bytes]:
        """The Temporal payload keys (first encrypts); PayloadKeyError says what is missing."""
        from infra.payload_codec import PayloadKeyError, parse_keys

        if self.temporal_payload_keys and self.temporal_payload_keys.strip():
            return parse_keys(self.temporal_payload_keys)
        if self.event_store == "postgres":
            raise PayloadKeyError(
                "GPGPU_TEMPORAL_PAYLOAD_KEYS is not set: with GPGPU_EVENT_STORE=postgres"
                " (production) the API and every control worker need the same key to"
                " encrypt Temporal's payloads (make one with: python -c 'import secrets;"
                " print(secrets.token_hex(32))')"
            )
        return [load_or_create_key(self.home / "temporal-payload.key")]

    def check_keys(self) -> None:
        """For a server process's start (the API, a control worker): exit with the reason
        when the payload key or the signing key is missing or malformed."""
        from infra.payload_codec import PayloadKeyError

        try:
            self.payload_keys  # noqa: B018 -- Temporal's payloads and assignment rows
            self.signing_secret  # noqa: B018 -- storage grants
        except (PayloadKeyError, SigningKeyError) as err:
            raise SystemExit(f"error: {err}") from None

    def temporal_converter(self) -> DataConverter:
        """The data converter of every Temporal client, worker and replayer of the network."""
        from infra.payload_codec import data_converter

        return data_converter(self.payload_keys)

    def eventsourcing_env(self) -> dict[str, str]:
        """Environment for the eventsourcing Applications: the store switch, the password
        hashes' cost and the providers an account may own (Identity reads them)."""
        return {"ARGON2_TIME_COST": str(self.password_hash_time_cost),
                "ARGON2_MEMORY_KIB": str(self.password_hash_memory_kib),
                "PROVIDERS_PER_ACCOUNT_MOST": str(self.max_providers_per_account),
                **self._store_env()}

    def _store_env(self) -> dict[str, str]:
        if self.event_store == "memory":
            return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        if self.event_store == "sqlite":
            self.home.mkdir(parents=True, exist_ok=True)
            return {
                "PERSISTENCE_MODULE": "infra.sqlite_store:PatientSQLiteFactory",
                "SQLITE_DBNAME": str(self.events_path),
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.pg_dbname,
            "POSTGRES_HOST": self.pg_host,
            "POSTGRES_PORT": str(self.pg_port),
            "POSTGRES_USER": self.pg_user,
            "POSTGRES_PASSWORD": self.pg_password,
        }
        if self.pg_schema:
            env["POSTGRES_SCHEMA"] = self.pg_schema
        return env

    def postgres_conninfo(self) -> str:
        parts = [
            f"host={self.pg_host}",
            f"port={self.pg_port}",
            f"dbname={self.pg_dbname}",
            f"user={self.pg_user}",
        ]
        if self.pg_password:
            parts.append(f"password={self.pg_password}")
        return " ".join(parts)
