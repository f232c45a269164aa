"""The Network is composed of one application per context over one store; identity runs
on its own as well."""

from __future__ import annotations

import time
from pathlib import Path

from domain.app_identity import Identity
from domain.application import Network

MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}


def test_every_context_writes_to_the_one_store_named_gpgpu() -> None:
    # The name picks the tables (gpgpu_events) and the environment's prefix: a context
    # class named after itself would write elsewhere.
    assert Network.name == Identity.name == "gpgpu"


def test_identity_is_an_application_of_its_own() -> None:
    identity = Identity(env=MEMORY)
    issued = identity.sign_up("solo@test.example", "a long password", ["client"], time.time(), 60)
    caller = identity.authenticate(issued.token, time.time())
    assert caller is not None and caller.email == "solo@test.example"
    assert not hasattr(identity, "submit_job")  # the job commands are the Network's


def test_the_network_has_none_of_identitys_commands() -> None:
    # Accounts, sessions, keys and claims are identity's alone (the API uses it directly);
    # the Network only reads who owns a provider, to keep a job's check runs apart.
    commands = {"sign_up", "sign_in", "sign_out", "authenticate", "change_password",
                "reset_password", "add_roles", "revoke_role", "create_user", "create_api_key",
                "revoke_api_key", "api_keys", "claim", "hand_over", "user_by_email"}
    assert commands <= set(dir(Identity))
    assert not commands & set(dir(Network))


def test_identity_beside_the_network_shares_even_the_in_memory_store() -> None:
    network = Network(env=MEMORY)
    identity = Identity.beside(network)
    user = identity.create_user("owner@test.example", "a long password", ["provider"], 0.0)
    identity.claim("provider", "prov-1", str(user.id))
    assert network.owner_of("provider", "prov-1") == str(user.id)
    assert network.same_owner({"prov-1"}) == {"prov-1"}


def test_the_network_reads_what_identity_wrote_in_the_same_store(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "e.db")}
    identity = Identity(env=env)
    user = identity.sign_up("both@test.example", "a long password", ["provider"], time.time(),
                            60).user
    identity.claim("provider", "prov-1", str(user.id))
    network = Network(env=env)
    assert network.owner_of("provider", "prov-1") == str(user.id)
    assert network.same_owner({"prov-1"}) == {"prov-1"}
