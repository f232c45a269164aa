"""Client storage: one object-store interface; the filesystem backend is the embedded default.

Every key lives under its client's own space. Writes go to a temporary file and
are renamed into place only once complete and checked, so nothing is ever
half-written; each object's sha256 is kept beside it. The S3 backend is in
infra/storage_s3.py; `build_store` picks one from the settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from domain.spec import check_storage_key

CHUNK = 1 << 20


class StorageError(Exception):
    pass


class ObjectNotFound(StorageError):
    pass


class IntegrityMismatch(StorageError):
    pass


class QuotaExceeded(StorageError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str


class ObjectStore(Protocol):
    def put(
        self, client_id: str, key: str, chunks: Iterable[bytes], expected_sha256: str | None
    ) -> ObjectInfo: ...
    def open(self, client_id: str, key: str) -> tuple[ObjectInfo, Iterator[bytes]]: ...
    def stat(self, client_id: str, key: str) -> ObjectInfo: ...
    def list(self, client_id: str, prefix: str = "") -> list[ObjectInfo]: ...
    def delete(self, client_id: str, key: str) -> None: ...


def delete_each(store: ObjectStore, client_id: str, keys: Iterable[str]) -> None:
    """Delete these objects in order; one already gone is no error (a retried cleanup)."""
    for key in keys:
        with contextlib.suppress(ObjectNotFound):
            store.delete(client_id, key)


def check_client_id(client_id: str) -> str:
    allowed = all(c.isalnum() or c in "-_." for c in client_id)
    if not client_id or len(client_id) > 64 or not allowed:
        raise StorageError(f"client id {client_id!r} must be 1-64 letters, digits, '-', '_' or '.'")
    if client_id.startswith("."):
        raise StorageError(f"client id {client_id!r} must not start with '.'")
    return client_id


def check_object_key(client_id: str, key: str) -> str:
    """The key, refused unless it is plain and inside the client's space. Every backend checks here.

    check_storage_key refuses '.', '..' and empty segments; the containment check
    stands guard should that rule ever loosen.
    """
    check_client_id(client_id)
    try:
        check_storage_key(key)
    except ValueError as err:
        raise StorageError(f"key: {err}") from None
    if posixpath.normpath(f"{client_id}/{key}") != f"{client_id}/{key}":
        raise StorageError(f"key: {key!r} leaves your storage space or is not plain")
    return key


class Intake:
    """The bytes of one upload as they pass: counted, hashed, refused past the client's quota.

    `usage` is what the client stores already, not counting the object being replaced.
    """

    def __init__(self, client_id: str, key: str, quota_bytes: int | None, usage: int = 0):
        self.client_id, self.key = client_id, key
        self.quota_bytes, self.usage = quota_bytes, usage
        self.size = 0
        self._digest = hashlib.sha256()

    def take(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        self._check_quota()
        for chunk in chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            self._check_quota()
            self._digest.update(chunk)
            yield chunk

    def _check_quota(self) -> None:
        if self.quota_bytes is not None and self.usage + self.size > self.quota_bytes:
            raise QuotaExceeded(
                f"{self.key}: refused, {self.client_id}'s storage quota is {self.quota_bytes} "
                f"bytes, {self.usage} bytes are in use and this upload reached {self.size} bytes"
            )

    def verify(self, expected_sha256: str | None) -> str:
        """The sha256 of everything taken, refused if the sender announced another."""
        sha = self._digest.hexdigest()
        if expected_sha256 and expected_sha256.lower() != sha:
            raise IntegrityMismatch(
                f"{self.key}: sha256 of the bytes received is {sha}, the sender said "
                f"{expected_sha256}"
            )
        return sha


class FilesystemStore:
    def __init__(self, root: Path, quota_bytes: int | None = None):
        self.root = root
        self.quota_bytes = quota_bytes
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, client_id: str, key: str) -> Path:
        key = check_object_key(client_id, key)
        space = (self.root / client_id).resolve()
        path = (space / key).resolve()
        if space not in path.parents:
            raise StorageError(f"key: {key!r} leaves your storage space")
        return path

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}.sha256")

    def _usage(self, client_id: str, replacing: Path) -> int:
        """Bytes in the client's objects, not counting `replacing` (sums the whole space)."""
        space = (self.root / client_id).resolve()
        if not space.exists():
            return 0
        return sum(
            p.stat().st_size
            for p in space.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p != replacing
        )

    def put(
        self, client_id: str, key: str, chunks: Iterable[bytes], expected_sha256: str | None = None
    ) -> ObjectInfo:
        key = check_object_key(client_id, key)
        path = self._path(client_id, key)
        usage = 0 if self.quota_bytes is None else self._usage(client_id, replacing=path)
        intake = Intake(client_id, key, self.quota_bytes, usage)
        # A file system can't hold both "a" and "a/b" (S3 can): refuse by name, not with a 500.
        clash = StorageError(f"key: {key!r} clashes with a stored key that is a folder of it "
                             "or inside it (this store can't hold both 'a' and 'a/b')")
        if path.is_dir():
            raise clash
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise clash from None
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        side_tmp = self._sidecar(path).with_suffix(".part")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in intake.take(chunks):
                    f.write(chunk)
            sha = intake.verify(expected_sha256)
            side_tmp.write_text(sha)
            os.replace(tmp, path)
            os.replace(side_tmp, self._sidecar(path))
        except IsADirectoryError:  # a folder of that name appeared meanwhile
            Path(tmp).unlink(missing_ok=True)
            side_tmp.unlink(missing_ok=True)
            raise clash from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            side_tmp.unlink(missing_ok=True)
            raise
        return ObjectInfo(key, intake.size, sha)

    def stat(self, client_id: str, key: str) -> ObjectInfo:
        path = self._path(client_id, key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r} in {client_id}'s storage")
        side = self._sidecar(path)
        sha = side.read_text().strip() if side.exists() else _hash_file(path)
        return ObjectInfo(key, path.stat().st_size, sha)

    def open(self, client_id: str, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        info = self.stat(client_id, key)
        path = self._path(client_id, key)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return info, chunks()

    def list(self, client_id: str, prefix: str = "") -> list[ObjectInfo]:
        space = self.root / check_client_id(client_id)
        if not space.exists():
            return []
        out = []
        for path in sorted(space.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(space).as_posix()
                if key.startswith(prefix):
                    out.append(self.stat(client_id, key))
        return out

    def delete(self, client_id: str, key: str) -> None:
        path = self._path(client_id, key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r} in {client_id}'s storage")
        path.unlink()
        self._sidecar(path).unlink(missing_ok=True)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_store(
    kind: str,
    *,
    root: Path,
    s3_endpoint: str | None = None,
    s3_bucket: str = "gpgpu",
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_region: str = "us-east-1",
    quota_bytes: int | None = None,
) -> ObjectStore:
    """The backend named by `kind`: "filesystem" (under `root`) or "s3" (one bucket)."""
    if kind == "filesystem":
        return FilesystemStore(root, quota_bytes=quota_bytes)
    if kind == "s3":
        from infra.storage_s3 import S3Store  # boto3 is imported only when S3 is used

        return S3Store(
            s3_bucket,
            endpoint=s3_endpoint,
            access_key=s3_access_key,
            secret_key=s3_secret_key,
            region=s3_region,
            quota_bytes=quota_bytes,
        )
    raise ValueError(f"storage backend {kind!r} is not one of 'filesystem', 's3'")
