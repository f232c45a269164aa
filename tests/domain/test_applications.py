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


def test_the_network_reads_what_identity_wrote_in_the_same_store(tmp_path: Path) -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(tmp_path / "e.db")}
    identity = Identity(env=env)
    user = identity.sign_up("both@test.example", "a long password", ["provider"], time.time(),
                            60).user
    identity.claim("provider", "prov-1", str(user.id))
    network = Network(env=env)
    assert network.owner_of("provider", "prov-1") == str(user.id)
    assert network.same_owner({"prov-1"}) == {"prov-1"}
