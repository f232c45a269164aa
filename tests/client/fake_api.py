"""A stand-in for the GPGPU API, for unit tests of the SDK and CLI beside it.

HTTP (GraphQL and storage) is answered in-process through httpx.MockTransport;
the jobEvents subscription is served by a real websockets server speaking
graphql-transport-ws, so the client's protocol code runs against real sockets.
The end-to-end test against the real API lives with the API.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from protocol import digest

CLIENT = "alice"
TOKEN = "gpk_alices-test-key-0123456789abcdef"  # conftest sets GPGPU_API_KEY to it


def job_json(job_id: str = "job-1", state: str = "SUBMITTED", **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": job_id,
        "clientId": CLIENT,
        "name": "hello",
        "state": state,
        "reason": "",
        "providerId": None,
        "queuePosition": None,
        "maxCostMicro": 12_500_000,
        "costMicro": None,
        "submittedAt": "2025-01-02T03:04:05.123456+00:00",
        "updatedAt": "2025-01-02T03:04:06.000000+00:00",
        "outputs": [],
        "events": [],
    }
    base.update(over)
    return base


def event_json(seq: int, type_: str, job_id: str = "job-1", **data: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "jobId": job_id,
        "type": type_,
        "at": f"2025-01-02T03:04:{seq:02d}Z",
        "data": data,
    }


def happy_events(job_id: str = "job-1") -> list[dict[str, Any]]:
    names: list[tuple[str, dict[str, Any]]] = [
        ("JobSubmitted", {}),
        ("FundsEscrowed", {"amount_micro": 12_500_000}),
        ("JobQueued", {}),
        (
            "GpusAllocated",
            {
                "provider_id": "prov-a",
                "gpu_indexes": [0],
                "price_per_gpu_hour_micro": 2_000_000,
                "attempt": 1,
            },
        ),
        ("InputsStaged", {"files": 2, "bytes": 1234}),
        ("ExecutionStarted", {}),
        (
            "ExecutionFinished",
            {"exit_code": 0, "timed_out": False, "gpu_ms": 1500, "log_tail": "ok"},
        ),
        ("OutputsUploaded", {"manifest": [{"path": "out/result.txt"}], "missing": []}),
        ("JobVerified", {}),
        (
            "JobSettled",
            {
                "charged_micro": 834,
                "provider_paid_micro": 793,
                "fee_micro": 41,
                "refunded_micro": 12_499_166,
            },
        ),
        ("JobSucceeded", {}),
    ]
    return [event_json(i + 1, t, job_id, **d) for i, (t, d) in enumerate(names)]


@dataclass
class FakeApi:
    objects: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)
    reject: list[dict[str, str]] | None = None
    requests: list[httpx.Request] = field(default_factory=list)
    # Websocket behaviour: drop the first connection after this many events.
    drop_after: int | None = None
    close_code: int | None = None
    # After the first connection, answer every handshake with this HTTP status.
    refuse_reconnects: int | None = None
    ws_inits: list[Any] = field(default_factory=list)
    keys_made: list[dict[str, Any]] = field(default_factory=list)
    password_changes: list[str] = field(default_factory=list)
    roles_added: list[list[str]] = field(default_factory=list)
    ws_subscribes: list[dict[str, Any]] = field(default_factory=list)
    queued: list[dict[str, Any]] = field(default_factory=list)  # what `query Queue` answers
    pongs: int = 0
    refused: int = 0
    _server: Server | None = None
    port: int = 0

    # -- HTTP -------------------------------------------------------------

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"detail": "unauthenticated"})
        path = request.url.path
        if path == "/graphql":
            return self._graphql(json.loads(request.content))
        prefix = f"/storage/{CLIENT}"
        if path == prefix and request.method == "GET":
            want = request.url.params.get("prefix", "")
            return httpx.Response(
                200,
                json=[
                    {"key": k, "size": len(v), "digest": digest.of_bytes(v)}
                    for k, v in sorted(self.objects.items())
                    if k.startswith(want)
                ],
            )
        if path.startswith(prefix + "/"):
            return self._object(request, path.removeprefix(prefix + "/"))
        return httpx.Response(404, json={"detail": "Not Found"})

    def _object(self, request: httpx.Request, key: str) -> httpx.Response:
        if request.method == "PUT":
            body = request.read()
            got = digest.of_bytes(body)
            if request.headers.get("X-Digest") != got:
                return httpx.Response(400, json={"detail": "digest mismatch"})
            self.objects[key] = body
            return httpx.Response(200, json={"key": key, "digest": got, "size": len(body)})
        if key not in self.objects:
            return httpx.Response(404, json={"detail": f"no object {key}"})
        if request.method == "DELETE":
            del self.objects[key]
            return httpx.Response(204)
        body = self.objects[key]
        return httpx.Response(
            200, content=body, headers={"X-Digest": digest.of_bytes(body)}
        )

    def _graphql(self, payload: dict[str, Any]) -> httpx.Response:
        query, variables = payload["query"], payload.get("variables") or {}
        if "mutation SubmitJob" in query:
            if self.reject is not None:
                result: dict[str, Any] = {"__typename": "SpecRejected", "errors": self.reject}
            else:
                self.submitted.append(variables["spec"])
                job = job_json()
                self.jobs.setdefault(job["id"], job)
                result = {"__typename": "JobSubmitted", "job": job}
            return httpx.Response(200, json={"data": {"submitJob": result}})
        if "mutation SignIn" in query:
            if variables["password"] != "alice's password":
                return httpx.Response(200, json={"data": {"signIn": {
                    "__typename": "FieldError", "field": "password",
                    "message": "the email and password do not match an account"}}})
            user = {"id": "u-1", "email": variables["email"], "roles": ["client", "provider"],
                    "clientId": CLIENT, "providerIds": [], "nodeIds": []}
            return httpx.Response(200, json={"data": {"signIn": {
                "__typename": "Session", "token": "gps_new-session", "user": user}}})
        if "mutation ChangePassword" in query:
            if variables["current"] != "alice's password":
                return httpx.Response(200, json={"data": {"changePassword": {
                    "__typename": "FieldError", "field": "currentPassword",
                    "message": "does not match the account's password"}}})
            self.password_changes.append(variables["new"])
            user = {"id": "u-1", "email": "a@b.test", "roles": ["client"], "clientId": CLIENT,
                    "providerIds": [], "nodeIds": []}
            return httpx.Response(200, json={"data": {"changePassword": {
                "token": "gps_after-the-change", "user": user}}})
        if "mutation AddRoles" in query:
            wanted = variables["roles"]
            if "admin" in wanted:  # as the API words it (domain.identity.check_roles)
                return httpx.Response(200, json={"data": None, "errors": [{
                    "message": "roles: 'admin' is not one of client, provider, operator"}]})
            self.roles_added.append(wanted)
            user = {"id": "u-1", "email": "a@b.test", "roles": ["client", *wanted],
                    "clientId": CLIENT, "providerIds": [], "nodeIds": []}
            return httpx.Response(200, json={"data": {"addRoles": user}})
        if "mutation CreateApiKey" in query:
            self.keys_made.append(variables)
            made = {"id": "k-1", "name": variables["name"], "scopes": variables["scopes"],
                    "key": "gpk_the-new-key-shown-once", "createdAt": "2025-01-02T03:04:05+00:00"}
            return httpx.Response(200, json={"data": {"createApiKey": made}})
        if "query Me" in query:
            me = {"id": "u-1", "email": "alice@example.test", "roles": ["client"],
                  "clientId": CLIENT, "providerIds": [], "nodeIds": []}
            return httpx.Response(200, json={"data": {"me": me}})
        if "query Queue" in query:
            return httpx.Response(200, json={"data": {"queue": self.queued}})
        if "query Jobs" in query:
            return httpx.Response(200, json={"data": {"jobs": list(self.jobs.values())}})
        if "mutation CancelJob" in query:
            job = self.jobs.get(variables["id"])
            if job is None:
                return httpx.Response(200, json={"data": None, "errors": [{
                    "message": f"id: no job {variables['id']} of yours"}]})
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return httpx.Response(200, json={"data": {"cancelJob": {
                    "__typename": "FieldError", "field": "id",
                    "message": f"job {job['id']} is already {job['state']}"}}})
            return httpx.Response(200, json={"data": {"cancelJob": {"__typename": "Job", **job}}})
        if "query Job" in query:
            return httpx.Response(200, json={"data": {"job": self.jobs.get(variables["id"])}})
        if "query Account" in query:
            return httpx.Response(
                200,
                json={
                    "data": {
                        "account": {
                            "clientId": CLIENT,
                            "balanceMicro": 87_500_000,
                            "escrowMicro": 12_500_000,
                        }
                    }
                },
            )
        return httpx.Response(200, json={"data": None, "errors": [{"message": "unknown query"}]})

    # -- websocket --------------------------------------------------------

    def start_ws(self) -> None:
        self._server = serve(
            self._ws,
            "127.0.0.1",
            0,
            process_request=self._handshake,
            subprotocols=[Subprotocol("graphql-transport-ws")],
        )
        self.port = self._server.socket.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop_ws(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.refuse_reconnects and self.ws_subscribes:
            self.refused += 1
            return ws.respond(self.refuse_reconnects, "down for maintenance\n")
        return None

    def _ws(self, ws: ServerConnection) -> None:
        init = json.loads(ws.recv())
        assert init["type"] == "connection_init"
        self.ws_inits.append(init.get("payload"))
        ws.send(json.dumps({"type": "ping"}))
        if json.loads(ws.recv())["type"] == "pong":
            self.pongs += 1
        ws.send(json.dumps({"type": "connection_ack"}))
        msg = json.loads(ws.recv())
        assert msg["type"] == "subscribe"
        self.ws_subscribes.append(msg["payload"]["variables"])
        if self.close_code is not None:
            ws.close(self.close_code, "forbidden")
            return
        job_id = msg["payload"]["variables"]["jobId"]
        if job_id not in self.jobs:
            ws.send(
                json.dumps(
                    {"id": msg["id"], "type": "error", "payload": [{"message": f"no job {job_id}"}]}
                )
            )
            return
        after = msg["payload"]["variables"]["after"]
        first = len(self.ws_subscribes) == 1
        sent = 0
        for event in self.events:
            if event["seq"] <= after:
                continue
            if first and self.drop_after is not None and sent == self.drop_after:
                ws.close_socket()  # an abrupt drop, no close frame
                return
            ws.send(
                json.dumps(
                    {"id": msg["id"], "type": "next", "payload": {"data": {"jobEvents": event}}}
                )
            )
            sent += 1
        ws.send(json.dumps({"id": msg["id"], "type": "complete"}))
