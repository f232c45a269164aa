"""Small real HTTP servers for the provider agent's tests.

StorageServer stands in for presigned storage URLs (GET/PUT files in a folder);
GraphQLRecorder answers the mutations the agent sends and keeps them, and plays the
provider API (api/assignments.py): it hands out the assignments a test gives it and
keeps the agent's heartbeats and reports. The real API is tested end to end in tests/e2e
and tests/adversarial; this one is for what the agent itself sends.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Put:
    name: str
    body: bytes
    digest_header: str | None
    chunked: bool


class _StorageHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _name(self) -> str:
        return unquote(urlsplit(self.path).path).removeprefix("/files/")

    def _refuse(self) -> bool:
        status = self.server.owner.fail_status  # type: ignore[attr-defined]
        if status is None:
            return False
        body = b"signature expired"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    def do_GET(self) -> None:
        if self._refuse():
            return
        path = self.server.owner.root / self._name()  # type: ignore[attr-defined]
        if not path.is_file():
            self.send_error(404, "no such object")
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self._refuse():
            return
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        owner = self.server.owner  # type: ignore[attr-defined]
        name = self._name()
        chunked = self.headers.get("Transfer-Encoding") == "chunked"
        owner.puts.append(Put(name, body, self.headers.get("X-Digest"), chunked))
        (owner.uploaded / name).parent.mkdir(parents=True, exist_ok=True)
        (owner.uploaded / name).write_bytes(body)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


class StorageServer(_Server):
    """GET /files/<name> from `root`; PUT /files/<name> into `uploaded`."""

    def __init__(self, root: Path, uploaded: Path) -> None:
        super().__init__(_StorageHandler)
        self.root = root
        self.uploaded = uploaded
        self.puts: list[Put] = []
        self.fail_status: int | None = None

    def url(self, name: str) -> str:
        return f"{self.base_url}/files/{name}"


class _GraphQLHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, answer: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        owner: GraphQLRecorder = self.server.owner  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts[:3] != ["provider", "v1", "providers"] or parts[4:] != ["assignments"]:
            self._answer({"detail": "not found"}, 404)
            return
        wait_s = min(1.0, float(parse_qs(url.query).get("wait_s", ["0"])[0]))
        deadline = time.monotonic() + wait_s
        while True:
            with owner.lock:
                mine = [a for a in owner.pending if a["providerId"] == parts[3]]
                for a in mine:
                    owner.pending.remove(a)
            if mine or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        self._answer({"assignments": mine})

    def do_POST(self) -> None:
        owner: GraphQLRecorder = self.server.owner  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = urlsplit(self.path).path.strip("/").split("/")
        if parts[:2] == ["provider", "v1"]:
            aid, what = parts[5], parts[6]
            with owner.lock:
                owner.step_calls.append((aid, what, body))
                if what in ("complete", "fail"):
                    owner.reports[aid] = (what, body)
            self._answer({"cancel": aid in owner.cancelled} if what == "heartbeat"
                         else {"ok": True})
            return
        owner.calls.append(body)
        if "registerProvider" in body["query"]:
            provider_id = body["variables"]["input"]["providerId"]
            answer: dict[str, Any] = {"data": {"registerProvider": {
                "__typename": "Provider", "providerId": provider_id}}}
        elif "drainProvider" in body["query"]:
            answer = {"data": {"drainProvider": {
                "__typename": "ProviderDrained", "providerId": body["variables"]["id"]}}}
        else:
            answer = {"data": {"providerHeartbeat": {
                "__typename": "HeartbeatReceived", "providerId": body["variables"]["id"]}}}
        self._answer(answer)


class GraphQLRecorder(_Server):
    def __init__(self, port: int = 0) -> None:
        super().__init__(_GraphQLHandler, port)
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        self.step_calls: list[tuple[str, str, dict[str, Any]]] = []
        self.reports: dict[str, tuple[str, dict[str, Any]]] = {}
        self.cancelled: set[str] = set()

    def named(self, mutation: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if mutation in c["query"]]

    def assign(self, provider_id: str, kind: str, request: dict[str, Any],
               heartbeat_timeout_s: float = 10.0) -> str:
        aid = str(uuid.uuid4())
        with self.lock:
            self.pending.append({"assignmentId": aid, "providerId": provider_id, "kind": kind,
                                 "request": request, "heartbeatTimeoutS": heartbeat_timeout_s})
        return aid

    def report(self, aid: str, timeout_s: float = 60.0) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if aid in self.reports:
                    return self.reports[aid]
            time.sleep(0.05)
        raise AssertionError(f"assignment {aid} was never reported")

    def heartbeats(self, aid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for a, what, b in self.step_calls if a == aid and what == "heartbeat"]
