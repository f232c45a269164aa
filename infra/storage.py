"""Client storage: one object-store interface; the filesystem backend is the embedded default.

Every key lives under its client's own space. Writes go to a temporary file and
are renamed into place only once complete and checked, so nothing is ever
half-written. Each object's digest (BLAKE3, protocol/digest.py) and size, computed
by the store as the bytes arrive, are kept where no key can name them: the
filesystem backend keeps them under `<root>/.meta/` (client ids never start with
'.', so no client's space is there), the S3 backend in the object's own metadata.
Objects stored before BLAKE3 keep the sha256 recorded then ("sha256:…"). A key
that looks like a metadata file (`.x.sha256`) is an ordinary object. A put with `create_only`
writes a key that does not exist yet, atomically (a run's output: written once,
never replaced). The S3 backend is in infra/storage_s3.py; `build_store` picks
one from the settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protocol import digest
from protocol.fields import check_storage_key
from protocol.limits import MAX_CLIENT_ID_CHARS

CHUNK = digest.CHUNK_BYTES  # what a download is read in


class StorageError(Exception):
    pass


class ObjectNotFound(StorageError):
    pass


class IntegrityMismatch(StorageError):
    pass


class QuotaExceeded(StorageError):
    """An upload past the client's quota: the quota and what the space held beside it."""

    def __init__(self, message: str, quota_bytes: int = 0, usage: int = 0):
        super().__init__(message)
        self.quota_bytes, self.usage = quota_bytes, usage


class AlreadyStored(StorageError):
    """A create-only put found the key taken: nothing was written."""

    def __init__(self, message: str, stored: ObjectInfo):
        super().__init__(message)
        self.stored = stored


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    digest: str  # "blake3:<hex>" (protocol/digest.py); "sha256:<hex>" if stored before


class ObjectStore(Protocol):
    def put(
        self, client_id: str, key: str, chunks: Iterable[bytes], expected_digest: str | None,
        *, expected_size: int | None = None, create_only: bool = False,
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
    if not client_id or len(client_id) > MAX_CLIENT_ID_CHARS or not allowed:
        raise StorageError(f"client id {client_id[:80]!r} must be 1-{MAX_CLIENT_ID_CHARS} "
                           "letters, digits, '-', '_' or '.'")
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
    """The bytes of one upload as they pass: counted, hashed, refused past the client's quota
    or past the size the sender declared.

    `usage` is what the client stores already, not counting the object being replaced.
    The digest recorded is BLAKE3's; a sender that declared a sha256 (a client from before
    BLAKE3) has its bytes checked against that as well, on the same pass.
    """

    def __init__(
        self, client_id: str, key: str, quota_bytes: int | None, usage: int = 0,
        expected_size: int | None = None, expected_digest: str | None = None,
    ):
        self.client_id, self.key = client_id, key
        self.quota_bytes, self.usage = quota_bytes, usage
        self.expected_size = expected_size
        self.expected_digest = declared(key, expected_digest)
        self.size = 0
        self._digest = digest.Digester()
        self._other: digest.Digester | None = None
        if self.expected_digest and digest.algorithm_of(self.expected_digest) != digest.ALGORITHM:
            self._other = digest.Digester.like(self.expected_digest)

    def take(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        self._check_quota()
        for chunk in chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            self._check_quota()
            if self.expected_size is not None and self.size > self.expected_size:
                raise IntegrityMismatch(
                    f"{self.key}: the body is longer than the {self.expected_size} bytes the "
                    "sender declared"
                )
            self._digest.update(chunk)
            if self._other is not None:
                self._other.update(chunk)
            yield chunk

    def _check_quota(self) -> None:
        if self.quota_bytes is not None and self.usage + self.size > self.quota_bytes:
            raise QuotaExceeded(
                f"{self.key}: refused, {self.client_id}'s storage quota is {self.quota_bytes} "
                f"bytes, {self.usage} bytes are in use and this upload reached {self.size} bytes",
                self.quota_bytes, self.usage,
            )

    def verify(self) -> str:
        """The digest of everything taken, refused if the sender declared another (or
        another size)."""
        got = self._digest.value()
        if self.expected_size is not None and self.size != self.expected_size:
            raise IntegrityMismatch(
                f"{self.key}: {self.size} bytes received, the sender declared "
                f"{self.expected_size}"
            )
        checked = got if self._other is None else self._other.value()
        if self.expected_digest and self.expected_digest != checked:
            raise IntegrityMismatch(
                f"{self.key}: the bytes received have digest {checked}, the sender said "
                f"{self.expected_digest}"
            )
        return got


def declared(key: str, value: str | None) -> str | None:
    """A sender's digest in its written form (a bare hex is a sha256), or None; refused
    (StorageError, naming the key) when it is not a digest."""
    if not value:
        return None
    try:
        return digest.normal(value)
    except ValueError as err:
        raise StorageError(f"{key}: the declared digest: {err}") from None


class FilesystemStore:
    """Objects at `<root>/<client>/<key>`; their digest and size at `<root>/.meta/<client>/<key>`.

    The metadata also holds the object file's inode and mtime: one that does not
    match the file (a crash between the two renames) is not believed, and the
    file is hashed instead. Temporary files live in `<root>/.tmp/`, locks in
    `<root>/.locks/`: nothing but the client's objects is in its space.
    """

    def __init__(self, root: Path, quota_bytes: int | None = None):
        self.root = root
        self.quota_bytes = quota_bytes
        root.mkdir(parents=True, exist_ok=True)
        for inner in (".meta", ".tmp", ".locks"):
            (root / inner).mkdir(exist_ok=True)

    def _path(self, client_id: str, key: str) -> Path:
        key = check_object_key(client_id, key)
        space = (self.root / client_id).resolve()
        path = (space / key).resolve()
        if space not in path.parents:
            raise StorageError(f"key: {key!r} leaves your storage space")
        return path

    def _meta(self, client_id: str, key: str) -> Path:
        return self.root / ".meta" / client_id / key

    @contextlib.contextmanager
    def _locked(self, client_id: str) -> Iterator[None]:
        """One writer at a time in a client's space, across processes (the API, the workers)."""
        with (self.root / ".locks" / client_id).open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _usage(self, client_id: str, replacing: Path) -> int:
        """Bytes in the client's objects, not counting `replacing` (sums the whole space)."""
        space = (self.root / client_id).resolve()
        if not space.exists():
            return 0
        return sum(p.stat().st_size for p in space.rglob("*") if p.is_file() and p != replacing)

    def put(
        self, client_id: str, key: str, chunks: Iterable[bytes],
        expected_digest: str | None = None, *, expected_size: int | None = None,
        create_only: bool = False,
    ) -> ObjectInfo:
        key = check_object_key(client_id, key)
        path = self._path(client_id, key)
        if create_only:
            self._refuse_taken(client_id, key, path)
        usage = 0 if self.quota_bytes is None else self._usage(client_id, replacing=path)
        intake = Intake(client_id, key, self.quota_bytes, usage, expected_size, expected_digest)
        # A file system can't hold both "a" and "a/b" (S3 can): refuse by name, not with a 500.
        clash = StorageError(f"key: {key!r} clashes with a stored key that is a folder of it "
                             "or inside it (this store can't hold both 'a' and 'a/b')")
        if path.is_dir():
            raise clash
        fd, tmp = tempfile.mkstemp(dir=self.root / ".tmp", suffix=".part")
        meta = self._meta(client_id, key)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in intake.take(chunks):
                    f.write(chunk)
            got = intake.verify()
            with self._locked(client_id):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    meta.parent.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError):
                    raise clash from None
                st = os.stat(tmp)
                meta_tmp = Path(f"{tmp}.meta")
                meta_tmp.write_text(json.dumps(
                    {"digest": got, "size": intake.size, "ino": st.st_ino,
                     "mtime_ns": st.st_mtime_ns}
                ))
                try:
                    if create_only:
                        os.link(tmp, path)  # fails if the key exists: never replaces
                    else:
                        os.replace(tmp, path)
                except FileExistsError:
                    meta_tmp.unlink(missing_ok=True)
                    self._refuse_taken(client_id, key, path)
                    raise
                except IsADirectoryError:  # a folder of that name appeared meanwhile
                    meta_tmp.unlink(missing_ok=True)
                    raise clash from None
                os.replace(meta_tmp, meta)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return ObjectInfo(key, intake.size, got)

    def _refuse_taken(self, client_id: str, key: str, path: Path) -> None:
        if path.is_file():
            raise AlreadyStored(
                f"{key}: already stored, and it is written once",
                self._info(client_id, key, path, path.stat()),
            )

    def _info(self, client_id: str, key: str, path: Path, st: os.stat_result) -> ObjectInfo:
        """The recorded digest when it is this very file's (a "sha256" recorded before BLAKE3
        counts), else the file's own, computed."""
        try:
            meta = json.loads(self._meta(client_id, key).read_text())
            same = (meta["ino"], meta["mtime_ns"], meta["size"]) == (
                st.st_ino, st.st_mtime_ns, st.st_size
            )
            if same:
                return ObjectInfo(key, st.st_size, digest.of_record(meta))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return ObjectInfo(key, st.st_size, digest.of_file(path)[0])

    def stat(self, client_id: str, key: str) -> ObjectInfo:
        path = self._path(client_id, key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {key!r} in {client_id}'s storage")
        return self._info(client_id, key, path, path.stat())

    def open(self, client_id: str, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        path = self._path(client_id, key)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {client_id}'s storage") from None
        try:
            info = self._info(client_id, key, path, os.fstat(f.fileno()))
        except BaseException:
            f.close()
            raise

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return info, chunks()

    def list(self, client_id: str, prefix: str = "") -> list[ObjectInfo]:
        space = self.root / check_client_id(client_id)
        if not space.exists():
            return []
        out = []
        for path in sorted(space.rglob("*")):
            if path.is_file():
                key = path.relative_to(space).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(ObjectNotFound):  # deleted since the walk
                        out.append(self.stat(client_id, key))
        return out

    def delete(self, client_id: str, key: str) -> None:
        path = self._path(client_id, key)
        with self._locked(client_id):
            if not path.is_file():
                raise ObjectNotFound(f"no object {key!r} in {client_id}'s storage")
            path.unlink()
            self._meta(client_id, key).unlink(missing_ok=True)


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
