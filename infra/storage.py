"""Client storage: one object-store interface; the filesystem backend is the embedded default.

Every key lives under its client's own space. Writes go to a temporary file and
are renamed into place only once complete and checked, so nothing is ever
half-written; each object's sha256 is kept beside it.
"""

from __future__ import annotations

import hashlib
import os
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


def check_client_id(client_id: str) -> str:
    allowed = all(c.isalnum() or c in "-_." for c in client_id)
    if not client_id or len(client_id) > 64 or not allowed:
        raise StorageError(f"client id {client_id!r} must be 1-64 letters, digits, '-', '_' or '.'")
    if client_id.startswith("."):
        raise StorageError(f"client id {client_id!r} must not start with '.'")
    return client_id


class FilesystemStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, client_id: str, key: str) -> Path:
        try:
            check_storage_key(key)
        except ValueError as err:
            raise StorageError(f"key: {err}") from None
        space = (self.root / check_client_id(client_id)).resolve()
        path = (space / key).resolve()
        if space not in path.parents:
            raise StorageError(f"key: {key!r} leaves your storage space")
        return path

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}.sha256")

    def put(
        self, client_id: str, key: str, chunks: Iterable[bytes], expected_sha256: str | None = None
    ) -> ObjectInfo:
        path = self._path(client_id, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
            if expected_sha256 and expected_sha256.lower() != sha:
                raise IntegrityMismatch(
                    f"{key}: sha256 of the bytes received is {sha}, the sender said "
                    f"{expected_sha256}"
                )
            side_tmp = self._sidecar(path).with_suffix(".part")
            side_tmp.write_text(sha)
            os.replace(tmp, path)
            os.replace(side_tmp, self._sidecar(path))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ObjectInfo(key, size, sha)

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
