"""`gpgpu up` / `make up`: the embedded network on one machine, in the foreground.

Starts the Temporal dev server (SQLite file under home), the API, the control
worker and two simulated GPU providers as child processes; submits the bundled
example job on first start; stops everything in order on Ctrl-C. State (jobs,
events, files, workflow history) stays under home for the next start.

On first start it makes a local admin account (every role) with an API key, on the
stores directly, prints both once, keeps them in home/dev-account.json (readable by
you only) and as `gpgpu login` would (~/.config/gpgpu/credentials for this API URL):
the example job runs with the key, and the `gpgpu` command works from another shell.

Each simulated provider is an account of its own (`<provider-id>@gpgpu.local`, role
provider) whose agent holds only that account's provider-scoped API key, kept in
dev-account.json too: an agent (and a job that escapes its sandbox into the agent's
environment) holds no admin key and no other secret of the control plane
(`agent_env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.settings import Settings
from ops.launch import start_listening, temporal_binary, temporal_dev_args, wait_for_http
from ops.supervisor import Child, Supervisor
from workflows.search_attributes import create_command

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello" / "job.yaml"
DEV_EMAIL = "dev@gpgpu.local"
DEV_CREDITS_MICRO = 1_000 * 1_000_000  # granted to the dev account (a ledger deposit)
PROVIDERS = [
    ("provider-a", "2xH100:80", "2.5"),
    ("provider-b", "2xA100:80", "1.8"),
]


# What a provider agent's environment keeps of ours: the GPGPU_* settings it reads, minus
# the control plane's secrets, and the few variables a process needs to run.
AGENT_SECRETS = frozenset({
    "GPGPU_API_KEY", "GPGPU_PG_PASSWORD", "GPGPU_S3_ACCESS_KEY", "GPGPU_S3_SECRET_KEY",
    "GPGPU_METRICS_TOKEN",
})
AGENT_PASSES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TZ", "TMPDIR", "TERM",
    "VIRTUAL_ENV", "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "DOCKER_HOST", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME",
})


def agent_env(env: dict[str, str], api_key: str) -> dict[str, str]:
    """A provider agent's environment: `api_key` (its own provider key) and nothing secret,
    nothing of Temporal either (it speaks only to the API)."""
    kept = {
        k: v for k, v in env.items()
        if k in AGENT_PASSES or k.startswith("LC_")
        or (k.startswith("GPGPU_") and k not in AGENT_SECRETS and not k.startswith("GPGPU_PG_")
            and not k.startswith("GPGPU_TEMPORAL_"))
    }
    return {**kept, "GPGPU_API_KEY": api_key}


def write_private(path: Path, data: str) -> None:
    """Write a file only its owner can read, from its first byte (then moved into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    tmp.replace(path)


def say(*parts: object, err: bool = False) -> None:
    """Print, but never let a closed terminal or pipe stop the shutdown."""
    with contextlib.suppress(BrokenPipeError, OSError):
        print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


class Stack:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None):
        self.settings = settings
        self.home = settings.home.resolve()
        self.logs = self.home / "logs"
        self.children: list[Child] = []
        self.env = {
            **os.environ, **(env or {}), "GPGPU_HOME": str(self.home), "PYTHONUNBUFFERED": "1"
        }

    def popen(self, name: str, args: list[str],
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT,
                env=self.env if env is None else env, cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
            )

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        """Start a child; the supervisor (`watch`) starts it again the same way if it exits."""
        child = Child(name, self.popen(name, args, env), self.logs / f"{name}.log",
                      lambda: self.popen(name, args, env), started_at=time.monotonic())
        self.children.append(child)
        return child

    def spawn_listening(
        self, name: str, args: Callable[[], list[str]], host: str, port: int, what: str,
        timeout_s: float = 60,
    ) -> Child:
        """A child started until it listens on host:port (see start_listening), again so
        when the supervisor restarts it. Critical: the network stops if it cannot."""

        def launch() -> subprocess.Popen[bytes]:
            return start_listening(lambda: self.popen(name, args()), host, port, what,
                                   timeout_s)

        child = Child(name, launch(), self.logs / f"{name}.log", launch, critical=True,
                      started_at=time.monotonic())
        self.children.append(child)
        return child

    def start_temporal(self) -> None:
        s = self.settings
        host, _, port = s.temporal_address.rpartition(":")
        self.spawn_listening("temporal", lambda: temporal_dev_args(
            int(port), self.home / "temporal.db", host=host, ui_port=s.temporal_ui_port,
            log_level="warn",
        ), host, int(port), "the Temporal dev server", 30)  # fmt: skip
        # A home made before the search attributes existed: its database needs them too.
        done = subprocess.run(
            create_command(temporal_binary(), s.temporal_address, s.temporal_namespace),
            capture_output=True, text=True, timeout=30,
        )
        if done.returncode != 0:  # jobs still run, only unsearchable
            say(f"warning: search attributes not registered: {done.stderr.strip()}", err=True)

    def start_control_plane(self) -> None:
        # Temporal's payload key and the signing key made once here (files under home),
        # before the API and the control worker both look for them; PayloadKeyError or
        # SigningKeyError if production (PostgreSQL) lacks one.
        if not self.env.get("GPGPU_TEMPORAL_PAYLOAD_KEYS"):
            self.settings.payload_keys  # noqa: B018
        if not self.env.get("GPGPU_SIGNING_KEY"):
            self.settings.signing_secret  # noqa: B018
        self.spawn("api", [sys.executable, "-m", "api"])
        self.spawn("control-worker", [sys.executable, "-m", "activities.worker"])
        wait_for_http(f"{self.settings.api_url}/healthz", 60, "the API")

    def start_provider(
        self, provider_id: str, gpus: str, price: str, *extra: str, api_key: str | None = None
    ) -> Child:
        """An agent with `api_key` (default: GPGPU_API_KEY of the stack's environment, which
        a test sets to a provider key) and no other secret in its environment."""
        key = api_key or self.env.get("GPGPU_API_KEY")
        if not key:
            raise RuntimeError(f"no API key for provider {provider_id}")
        return self.spawn(provider_id, [
            sys.executable, "-m", "worker_gpu", "--provider-id", provider_id,
            "--simulate", gpus, "--price", price,
            "--scratch", str(self.home / "providers" / provider_id), *extra,
        ], agent_env(self.env, key))

    @property
    def account_path(self) -> Path:
        return self.home / "dev-account.json"

    def dev_account(self) -> dict[str, Any]:
        """The local admin and its API key: made on the stores once, kept under home."""
        path = self.account_path
        if path.exists():
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)  # kept by a version that let others read it
            found: dict[str, Any] = json.loads(path.read_text())
            return found
        from domain.app_identity import Identity
        from domain.identity import ROLES
        from ops.admin import create_admin

        password = secrets.token_urlsafe(12)
        user = create_admin(self.settings, DEV_EMAIL, password)
        app = Identity(env=self.settings.eventsourcing_env())
        key = app.create_api_key(user.id, "gpgpu up", list(ROLES), list(ROLES), time.time())
        account = {"email": DEV_EMAIL, "password": password, "api_key": key.key}
        self.home.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(account, indent=2))
        say(f"  account       {DEV_EMAIL} (admin), password {password}\n"
            f"  API key       {key.key}\n"
            f"                shown once; kept in {path}")
        return account

    def provider_key(self, provider_id: str) -> str:
        """The API key of the account that owns this simulated provider (role and scope
        provider only): made on the stores once, kept in dev-account.json. A provider id an
        earlier version registered with the admin account is handed over to it."""
        account = self.dev_account()
        keys: dict[str, str] = account.setdefault("providers", {})
        if provider_id in keys:
            return keys[provider_id]
        from domain.app_identity import Identity

        app = Identity(env=self.settings.eventsourcing_env())
        email = f"{provider_id}@gpgpu.local"
        user = app.create_user(email, secrets.token_urlsafe(24), ["provider"], time.time())
        app.hand_over("provider", provider_id, user.id)
        issued = app.create_api_key(user.id, f"agent {provider_id}", ["provider"], ["provider"],
                                    time.time())
        keys[provider_id] = issued.key
        write_private(self.account_path, json.dumps(account, indent=2))
        return issued.key

    def grant_dev_credits(self) -> None:
        """The dev account's credits: a grant recorded in the ledger, once per home (sign-up
        gives nothing unless GPGPU_STARTING_BALANCE_MICRO says so)."""
        from domain.app_identity import Identity
        from ops.admin import grant_credits

        user = Identity(env=self.settings.eventsourcing_env()).user_by_email(DEV_EMAIL)
        if user is not None and user.client_id:
            grant_credits(self.settings, user.client_id, DEV_CREDITS_MICRO, "gpgpu-up")

    def use_dev_account(self) -> str:
        """The dev account's key for the example job and the gpgpu command (never an agent's)."""
        from client.config import load_credentials, save_credentials

        account = self.dev_account()
        self.grant_dev_credits()
        key: str = account["api_key"]
        saved = load_credentials().get(self.settings.api_url)
        if not isinstance(saved, dict) or saved.get("token") != key:
            try:
                where = save_credentials(self.settings.api_url, key, account["email"])
                say(f"  credentials   {where} (gpgpu commands act as {account['email']})")
            except OSError as err:
                say(f"  warning: could not save the key for gpgpu commands: {err}", err=True)
        return key

    def start(self) -> None:
        s = self.settings
        say(f"starting the embedded network under {self.home}")
        self.start_temporal()
        self.use_dev_account()
        host = s.temporal_address.rpartition(":")[0]
        say(f"  temporal      {s.temporal_address} (UI http://{host}:{s.temporal_ui_port})")
        self.start_control_plane()
        say(f"  api           {s.api_url}  (GraphiQL {s.api_url}/graphql)")
        self.start_providers()
        say(f"  logs          {self.logs}/")

    def start_providers(self) -> list[Child]:
        """The simulated providers, each agent with its own account's provider key."""
        agents = []
        for provider_id, gpus, price in PROVIDERS:
            key = self.provider_key(provider_id)
            agents.append(self.start_provider(provider_id, gpus, price, api_key=key))
            say(f"  provider      {provider_id}: simulated {gpus} at {price} credits/GPU-hour")
        return agents

    def submit_example_once(self) -> None:
        marker = self.home / "example-submitted"
        if marker.exists():
            return
        from client.sdk import GpgpuClient

        key = self.dev_account()["api_key"]
        with GpgpuClient(api_url=self.settings.api_url, api_key=key) as client:
            job = client.submit_spec_file(EXAMPLE)
        marker.write_text(job.id)
        say(f"\nsubmitted the example job {job.id}; follow it with\n"
              f"  gpgpu job show {job.id}\n")

    def watch(self) -> int:
        """Block until Ctrl-C (0), restarting children that exit (ops/supervisor.py); 1 when
        the Temporal dev server cannot be started again."""
        stop = {"signal": False}

        def on_signal(signum: int, _frame: object) -> None:
            stop["signal"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        say("the network is up; Ctrl-C stops it")
        supervisor = Supervisor(self.children, say)
        while not stop["signal"]:
            if (reason := supervisor.poll()) is not None:
                say(f"error: {reason}; stopping the network", err=True)
                return 1
            time.sleep(0.3)
        return 0

    def stop(self, quiet: bool = False) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
            if not quiet:
                say(f"  stopped {child.name}")


def main() -> None:
    stack = Stack(Settings())
    code = 1
    try:
        stack.start()
        stack.submit_example_once()
        code = stack.watch()
    except KeyboardInterrupt:
        code = 0
    except Exception as err:  # one clear line; the logs hold the details
        say(f"error: {err}", err=True)
    finally:
        say("stopping the network")
        stack.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
