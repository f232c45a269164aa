"""Attacks on the network's secrets: no secret is where a job or a provider can read it.

The signing key and the dev account file are private to the control plane's user from
their first byte (and an older, readable one is made private on start). Under a started
dev stack (`gpgpu up`'s own code: the dev account, the API, the control worker and the
simulated providers, real processes), each agent's environment, read from
/proc/<pid>/environ, holds its own provider-scoped key and no admin key or other secret;
with that key the admin's and the other provider's mutations are refused, and nothing
changes.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.app_identity import Identity
from infra.settings import Settings
from ops.devstack import DEV_EMAIL, PROVIDERS, Stack
from ops.launch import free_port
from tests.e2e.network import FAST_FAULTS

CANARIES = {  # secrets of the control plane, in the environment `gpgpu up` was started from
    "GPGPU_METRICS_TOKEN": "canary-metrics-token",
    "GPGPU_S3_SECRET_KEY": "canary-s3-secret",
    "GPGPU_S3_ACCESS_KEY": "canary-s3-access",
    "GPGPU_PG_PASSWORD": "canary-pg-password",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_the_signing_key_is_private_from_its_first_byte(tmp_path: Path) -> None:
    with umask(0):  # a umask that lets everyone read: the mode is given at creation
        secret = Settings(home=tmp_path).signing_secret
    assert mode(tmp_path / "signing.key") == 0o600
    assert len(secret) == 32
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_readable_signing_key_is_made_private_on_start(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    key.write_text("ab" * 32)
    key.chmod(0o644)
    assert Settings(home=tmp_path).signing_secret == bytes.fromhex("ab" * 32)
    assert mode(key) == 0o600


def test_the_dev_account_file_is_private(tmp_path: Path) -> None:
    stack = Stack(Settings(home=tmp_path / "home"))
    with umask(0):
        account = stack.dev_account()
        stack.provider_key("provider-a")  # rewritten with the provider's key: still private
    path = tmp_path / "home" / "dev-account.json"
    assert mode(path) == 0o600
    assert json.loads(path.read_text())["api_key"] == account["api_key"]
    path.chmod(0o644)  # as an older version left it
    assert Stack(Settings(home=tmp_path / "home")).dev_account()["email"] == DEV_EMAIL
    assert mode(path) == 0o600


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


class Caller:
    def __init__(self, url: str, token: str):
        self.http = httpx.Client(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})

    def post(self, query: str, **variables: Any) -> dict[str, Any]:
        r = self.http.post("/graphql", json={"query": query, "variables": variables})
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.post(query, **variables)
        assert "errors" not in body, body["errors"]
        return dict(body["data"])

    def refused(self, query: str, **variables: Any) -> str:
        body = self.post(query, **variables)
        assert body.get("errors") and not any((body.get("data") or {}).values()), body
        return str(body["errors"][0]["message"])


PROVIDER_STATE = """query($id: String!) { provider(providerId: $id) {
  status pricePerGpuHourMicro gpus { index status } } }"""


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("devstack")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(home=home, temporal_address=temporal_server, api_port=port, api_url=url)
    stack = Stack(settings, {
        **FAST_FAULTS, **CANARIES,
        "GPGPU_TEMPORAL_ADDRESS": temporal_server, "GPGPU_API_PORT": str(port),
        "GPGPU_API_URL": url, "GPGPU_CONTROL_TASK_QUEUE": f"control-{port}",
    })
    admin_key = stack.dev_account()["api_key"]
    # A user who exported the admin key in the shell `gpgpu up` runs from.
    stack.env["GPGPU_API_KEY"] = admin_key
    # A home from before provider accounts: the admin registered provider-a.
    app = Identity(env=settings.eventsourcing_env())
    admin = app.user_by_email(DEV_EMAIL)
    assert admin is not None
    app.claim("provider", "provider-a", str(admin.id))
    try:
        stack.start_control_plane()
        stack.start_providers()
        caller = Caller(url, admin_key)
        deadline = time.monotonic() + 90
        while True:
            found = caller.gql("{ providers { providerId status } }")["providers"]
            if {p["providerId"] for p in found if p["status"] == "online"} >= {
                    p[0] for p in PROVIDERS}:
                break
            logs = {c.name: c.log.read_text()[-2000:] for c in stack.children}
            assert time.monotonic() < deadline, f"providers did not come online: {logs}"
            time.sleep(0.5)
        yield stack
    finally:
        stack.stop(quiet=True)


def agents(stack: Stack) -> dict[str, int]:
    ids = {p[0] for p in PROVIDERS}
    return {c.name: c.proc.pid for c in stack.children if c.name in ids}


def test_no_agent_environment_holds_the_admin_key_or_another_secret(dev_stack: Stack) -> None:
    account = json.loads((dev_stack.home / "dev-account.json").read_text())
    found = agents(dev_stack)
    assert sorted(found) == sorted(p[0] for p in PROVIDERS)
    for provider_id, pid in found.items():
        env = environ(pid)
        values = set(env.values())
        assert account["api_key"] not in values, provider_id
        assert account["password"] not in "\n".join(env.values()), provider_id
        assert not values & set(CANARIES.values()), provider_id
        assert env["GPGPU_API_KEY"] == account["providers"][provider_id]
    keys = [account["providers"][p] for p in found]
    assert len(set(keys)) == len(keys)  # each agent its own key


def test_an_agents_key_cannot_do_what_an_admin_or_another_provider_does(
    dev_stack: Stack,
) -> None:
    account = json.loads((dev_stack.home / "dev-account.json").read_text())
    url = dev_stack.settings.api_url
    agent = Caller(url, environ(agents(dev_stack)["provider-a"])["GPGPU_API_KEY"])
    admin = Caller(url, account["api_key"])
    app = Identity(env=dev_stack.settings.eventsourcing_env())  # the one store's events
    before_b = admin.gql(PROVIDER_STATE, id="provider-b")["provider"]
    before = app.recorder.max_notification_id()
    attacks = [
        ('mutation { resetPassword(email: "dev@gpgpu.local") { __typename } }', {}),
        ('mutation { revokeRole(email: "provider-b@gpgpu.local", role: "provider")'
         ' { __typename } }', {}),
        ('mutation { registerNode(nodeId: "evil", region: "x", operator: "x")'
         ' { __typename } }', {}),
        ('mutation { createApiKey(name: "more", scopes: ["provider"]) { __typename } }', {}),
        ('mutation($id: String!) { setPrice(providerId: $id, pricePerGpuHour: "0.000001")'
         ' { __typename } }', {"id": "provider-b"}),
        ('mutation($id: String!) { suspendGpu(providerId: $id, index: 0) { __typename } }',
         {"id": "provider-b"}),
        ('mutation($id: String!) { drainProvider(providerId: $id) { __typename } }',
         {"id": "provider-b"}),
    ]
    for query, variables in attacks:
        message = agent.refused(query, **variables)
        assert message.startswith(("forbidden", "unauthenticated")), (query, message)
    assert app.recorder.max_notification_id() == before
    assert admin.gql(PROVIDER_STATE, id="provider-b")["provider"] == before_b
    user = app.user_by_email("provider-b@gpgpu.local")
    assert user is not None and "provider" in user.roles
    signed_in = httpx.post(f"{url}/graphql", json={
        "query": "mutation($e: String!, $p: String!) { signIn(email: $e, password: $p)"
                 " { ... on Session { token } } }",
        "variables": {"e": DEV_EMAIL, "p": account["password"]}})
    assert signed_in.json()["data"]["signIn"]["token"]  # the admin's password is unchanged
    # provider-a, the admin's in the older home, was handed over to its own account.
    owner = app.user_by_email("provider-a@gpgpu.local")
    dev = app.user_by_email(DEV_EMAIL)
    assert owner is not None and dev is not None
    assert app.owner_of("provider", "provider-a") == str(owner.id)
    assert "provider-a" in owner.provider_ids and "provider-a" not in dev.provider_ids
    # Its own provider it does manage (the key is a real provider key, not a dead one).
    assert agent.gql(PROVIDER_STATE, id="provider-a")["provider"]["status"] == "online"
