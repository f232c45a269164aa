"""A real S3 server (Ceph RGW, via scripts/s3-up.sh) for the session, and stores of both kinds."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config

from api.auth import Authenticator
from domain.app_identity import Identity
from domain.application import Network
from infra.signing import Grant, grant_url
from infra.storage import FilesystemStore, ObjectStore, build_store
from infra.storage_s3 import STAGING_PREFIX, S3Store
from ops.launch import free_port
from tests.domain.support import Names, lifecycle_commands

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PACKAGES_NOT_INSTALLABLE = 3  # s3-up.sh's exit status when it cannot install Ceph
# RGW's first start may install Ceph from apt (over a minute on a fresh machine).
SERVER_START_LIMIT_S = 600


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = "devaccess"
    secret_key: str = "devsecret"
    region: str = "us-east-1"

    def client(self) -> Any:
        """A plain boto3 client, to look at the bucket behind a store's back."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def store(self, bucket: str | None = None, quota_bytes: int | None = None) -> S3Store:
        return S3Store(
            bucket or fresh_bucket(),
            endpoint=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            quota_bytes=quota_bytes,
        )


def fresh_bucket() -> str:
    return f"t-{uuid.uuid4().hex[:20]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """Ceph RGW on a free port; skipped only where Ceph's packages cannot be installed."""
    where = tmp_path_factory.mktemp("rgw")
    port = free_port()
    started = time.monotonic()
    try:
        up = subprocess.run(
            ["bash", str(SCRIPTS / "s3-up.sh"), str(where), str(port)],
            capture_output=True,
            text=True,
            timeout=SERVER_START_LIMIT_S,
        )
        took = time.monotonic() - started
        said = (up.stdout + up.stderr).strip()[-3000:]
        if up.returncode == PACKAGES_NOT_INSTALLABLE:
            pytest.skip(f"no S3 server: Ceph RGW's packages cannot be installed here:\n{said}")
        if up.returncode != 0:
            pytest.fail(
                f"scripts/s3-up.sh failed (exit {up.returncode}) after {took:.1f}s:\n{said}"
            )
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        subprocess.run(["bash", str(SCRIPTS / "s3-down.sh"), str(where)], timeout=60, check=False)


StoreFactory = Callable[..., ObjectStore]


@pytest.fixture(params=["filesystem", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Stores of the kind under test, made by build_store as the services make them."""
    server: S3Server | None = None
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")

    def make(quota_bytes: int | None = None) -> ObjectStore:
        if server is None:
            return build_store("filesystem", root=tmp_path / "storage", quota_bytes=quota_bytes)
        return build_store(
            "s3",
            root=tmp_path / "unused",
            s3_endpoint=server.endpoint,
            s3_bucket=fresh_bucket(),
            s3_access_key=server.access_key,
            s3_secret_key=server.secret_key,
            s3_region=server.region,
            quota_bytes=quota_bytes,
        )

    return make


@pytest.fixture
def store(make_store: StoreFactory) -> ObjectStore:
    return make_store()


def leftovers(store: ObjectStore) -> list[str]:
    """What an upload may leave behind outside any object: temporary files, parts, staged copies."""
    if isinstance(store, FilesystemStore):
        return sorted(str(p) for p in store.root.rglob("*.part"))
    assert isinstance(store, S3Store)
    s3 = store.s3
    uploads = s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    staged = s3.list_objects_v2(Bucket=store.bucket, Prefix=STAGING_PREFIX).get("Contents", [])
    return [f"multipart upload of {u['Key']}" for u in uploads] + [o["Key"] for o in staged]


# The storage router served alone, for the grant tests (test_storage_api, test_storage_staging).

SECRET = b"k" * 32
RUN = Names()  # job-1 of alice, attempt 1 on prov-1


def live_run() -> Network:
    """A real (in-memory) Network with RUN's job admitted and allocated: its grants are live."""
    network = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    for name, command in lifecycle_commands(network, RUN):
        command()
        if name == "allocate":
            return network
    raise AssertionError("the lifecycle has no allocate step")


# The API keys of the latest storage_services' network: "own", a provider key of RUN's
# provider's owner (who renews its grants); "other", of another provider's owner; "client",
# RUN's client's own key.
KEYS: dict[str, str] = {}


def provider_keys(identity: Identity) -> dict[str, str]:
    now = time.time()
    owner = identity.create_user("prov-owner@storage.test", "pw-" + "x" * 12, ["provider"], now)
    identity.hand_over("provider", RUN.provider, owner.id)
    other = identity.create_user("other-owner@storage.test", "pw-" + "y" * 12, ["provider"], now)
    identity.claim("provider", "prov-2", other.id)
    client = identity.create_user("client@storage.test", "pw-" + "z" * 12, ["client"], now)
    return {
        "own": identity.create_api_key(owner.id, "agent", ["provider"], ["provider"], now).key,
        "other": identity.create_api_key(other.id, "agent", ["provider"], ["provider"], now).key,
        "client": identity.create_api_key(client.id, "cli", ["client"], ["client"], now).key,
    }


def storage_services(store: ObjectStore, api_url: str = "http://127.0.0.1") -> SimpleNamespace:
    """What api.storage reads from the services: settings, the store, the network, who
    a token is (KEYS holds the keys made for this network)."""
    settings = SimpleNamespace(signing_secret=SECRET, grant_max_s=900, api_url=api_url,
                               max_object_bytes=64 << 20)
    network = live_run()
    identity = Identity.beside(network)  # accounts and keys: identity's, in the same store
    KEYS.clear()
    KEYS.update(provider_keys(identity))
    return SimpleNamespace(settings=settings, store=store, network=network, identity=identity,
                           auth=Authenticator(identity, 0.0))


def run_grant(base: str, method: str, key: str, *, digest: str = "", size: int = 1 << 30,
              once: bool = False, expires_in: int = 600, job_id: str = RUN.job,
              provider_id: str = RUN.provider) -> str:
    grant = Grant(method, RUN.client, key, int(time.time()) + expires_in, job_id, 1,
                  provider_id, size, digest, once)
    return grant_url(SECRET, base, grant)


def recorded_as_before_blake3(store: ObjectStore, client_id: str, key: str, hexpart: str) -> None:
    """Rewrite an object's metadata as the store wrote it before BLAKE3: a bare `sha256`."""
    if isinstance(store, FilesystemStore):
        meta = store.root / ".meta" / client_id / key
        record = json.loads(meta.read_text())
        del record["digest"]
        meta.write_text(json.dumps({**record, "sha256": hexpart}))
    else:
        assert isinstance(store, S3Store)
        name = f"{client_id}/{key}"
        store.s3.copy_object(Bucket=store.bucket, Key=name, Metadata={"sha256": hexpart},
                             CopySource={"Bucket": store.bucket, "Key": name},
                             MetadataDirective="REPLACE")
