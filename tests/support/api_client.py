"""Named callers of the real API app served in this process (api_server.running_api).

`api_in_thread(home, temporal_address)` serves the app on a free port and yields an `Api`:
callers are accounts named by the test ("prov" owns the providers it registers, "alice"
runs a node, "admin" is made on the stores, any other name is a client), each signed up
once through the API, its session token sent as `Authorization: Bearer`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from api.services import Services
from domain.identity import ROLES
from infra.settings import Settings
from ops.launch import free_port
from tests.support.api_server import running_api
from tests.support.graphql import PROVIDER, REGISTER_PROVIDER, SIGN_IN, SIGN_UP, accepted

PASSWORD = "api test password"
EMAIL_DOMAIN = "api.test"
ACCOUNT_ROLES = {"prov": ["client", "provider"], "alice": ["client", "operator"]}
H100 = "NVIDIA H100 80GB HBM3"
HTTP_TIMEOUT_S = 30


@dataclass
class Api:
    url: str
    app: FastAPI
    http: httpx.Client
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def session(self, name: str) -> dict[str, Any]:
        """The account `name` (signed up once; "admin" made on the stores): token, clientId."""
        if name not in self.sessions:
            email = f"{name}@{EMAIL_DOMAIN}"
            variables: dict[str, Any]
            if name == "admin":
                self.services.identity.create_user(email, PASSWORD, list(ROLES), time.time())
                query, variables = SIGN_IN, {"e": email, "p": PASSWORD}
            else:
                roles = ACCOUNT_ROLES.get(name, ["client"])
                query, variables = SIGN_UP, {"e": email, "p": PASSWORD, "r": roles}
            r = self.http.post("/graphql", json={"query": query, "variables": variables})
            data = r.json()["data"]
            found = accepted(data.get("signIn") or data["signUp"])
            self.sessions[name] = {"token": found["token"], **found["user"]}
        return self.sessions[name]

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session(name)['token']}"}

    def client_id(self, name: str) -> str:
        return str(self.session(name)["clientId"])

    def post(self, query: str, client: str = "prov", **variables: Any) -> dict[str, Any]:
        r = self.http.post("/graphql", json={"query": query, "variables": variables},
                           headers=self.headers(client))
        r.raise_for_status()
        return r.json()

    def gql(self, query: str, client: str = "prov", **variables: Any) -> dict[str, Any]:
        body = self.post(query, client, **variables)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def error(self, query: str, caller: str = "prov", **variables: Any) -> str:
        body = self.post(query, caller, **variables)
        assert body.get("errors"), body
        return str(body["errors"][0]["message"])

    def refusal(self, query: str, caller: str = "prov", **variables: Any) -> str:
        """A mutation's FieldError result (`<payload> | FieldError`) as "field: message";
        the document asks for `__typename` and the FieldError (graphql.REFUSAL)."""
        (answer,) = self.gql(query, caller, **variables).values()
        assert answer["__typename"] == "FieldError", answer
        return f"{answer['field']}: {answer['message']}" if answer["field"] else answer["message"]

    def provider(self, provider_id: str) -> dict[str, Any]:
        return self.gql(PROVIDER, id=provider_id)["provider"]

    def events(self, provider_id: str) -> list[str]:
        rows = self.services.views.query(
            "SELECT type FROM provider_events WHERE provider_id = ? ORDER BY seq", (provider_id,)
        )
        return [r["type"] for r in rows]

    def register(self, provider_id: str, gpus: int = 2, model: str = H100,
                 price_micro: int = 2_000_000, node: str = "local") -> None:
        accepted(self.gql(REGISTER_PROVIDER, input={
            "providerId": provider_id, "region": "eu", "pricePerGpuHourMicro": price_micro,
            "gpus": [{"index": i, "model": model, "memoryMb": 81_559} for i in range(gpus)],
            "node": node,
        })["registerProvider"])


@contextmanager
def api_in_thread(home: Path, temporal_address: str, **settings: Any) -> Iterator[Api]:
    """The real API app on a free port until the block ends; `settings`: Settings' fields."""
    port = free_port()
    config = Settings(home=home, temporal_address=temporal_address, api_port=port,
                      api_url=f"http://127.0.0.1:{port}", **settings)
    with running_api(config) as app, httpx.Client(base_url=config.api_url,
                                                   timeout=HTTP_TIMEOUT_S) as http:
        yield Api(config.api_url, app, http)
