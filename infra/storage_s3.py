"""Client storage on S3 or an S3-compatible server (Ceph RGW): a bucket, `<client_id>/` each.

An upload streams through as the parts of a multipart upload, hashed on the way,
and becomes visible only once complete and checked: any error aborts it. Its
digest (BLAKE3, protocol/digest.py) is kept as the object's `digest` metadata
(objects stored before BLAKE3 have a `sha256` one, read as "sha256:…"). S3 takes
metadata when an upload starts, so an upload whose sender announced its BLAKE3
digest goes straight to its key and is checked before it is completed; one that
did not goes to a staging key outside every client's space and is copied into
place with the digest computed on the way. Either way a refused upload leaves the
previous object, if any, as it was. Only the control plane holds the bucket's
credentials, so no client key reaches the metadata: what `stat` says is what the
store computed when the bytes arrived. A `create_only` put (a run's output) needs
the sender's digest and is made with `If-None-Match: *`, and the key is looked at
again just before the upload completes, so it never replaces an object. (botocore
still hashes each request's body with sha256 over plain HTTP: SigV4 asks for it.)
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.storage import (
    CHUNK,
    AlreadyStored,
    Intake,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    check_client_id,
    check_object_key,
    declared,
)
from protocol import digest

log = logging.getLogger(__name__)

PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20  # S3's least size for any part but the last
# Client ids never start with '.', so nothing here is in a client's space.
STAGING_PREFIX = ".staging/"
# A plain copy takes up to 5 GiB; larger staged objects are copied in parts.
COPY_TRANSFER = TransferConfig(multipart_threshold=4 << 30, multipart_chunksize=1 << 30)
MAX_PRESIGN_S = 15 * 60  # a GET straight from S3 is a grant: minutes, as ours (infra/signing)
PRESIGN_OPERATIONS = {"GET": "get_object"}  # a PUT straight to S3 would skip every check
_MISSING = {"404", "NoSuchKey", "NotFound"}
_TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


class S3Store:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str = "us-east-1",
        quota_bytes: int | None = None,
        part_size: int = PART_SIZE,
    ):
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size {part_size} is below S3's least, {MIN_PART_SIZE}")
        self.bucket = bucket
        self.region = region
        self.quota_bytes = quota_bytes
        self.part_size = part_size
        config = Config(
            signature_version="s3v4",
            # An endpoint of our own (RGW on 127.0.0.1) has no per-bucket host names.
            s3={"addressing_style": "path" if endpoint else "virtual"},
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=32,
            # We hash every object ourselves; servers other than AWS may refuse the
            # checksum headers newer botocore adds by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.s3: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- the bucket ---------------------------------------------------------

    def _client(self) -> Any:
        """The S3 client, once the bucket exists (it is created on first use)."""
        if not self._bucket_ready:
            with self._bucket_lock:
                if not self._bucket_ready:
                    self._create_bucket_if_missing()
                    self._bucket_ready = True
        return self.s3

    def _create_bucket_if_missing(self) -> None:
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as err:
            if _code(err) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.s3.create_bucket(**args)
        except ClientError as err:
            if _code(err) != "BucketAlreadyOwnedByYou":  # another process was first
                raise
            return
        log.info("created bucket %s", self.bucket)
        self._set_lifecycle()

    def _set_lifecycle(self) -> None:
        """Clear what a process that died mid-upload left: parts and staged objects."""
        rules = [
            {
                "ID": "abort-stale-multipart-uploads",
                "Filter": {"Prefix": ""},
                "Status": "Enabled",
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            },
            {
                "ID": "expire-staged-uploads",
                "Filter": {"Prefix": STAGING_PREFIX},
                "Status": "Enabled",
                "Expiration": {"Days": 1},
            },
        ]
        try:
            self.s3.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": rules}
            )
        except ClientError as err:
            log.warning("bucket %s: lifecycle rules not set (%s)", self.bucket, err)

    # -- the object store -----------------------------------------------------

    def put(
        self, client_id: str, key: str, chunks: Iterable[bytes],
        expected_digest: str | None = None, *, expected_size: int | None = None,
        create_only: bool = False,
    ) -> ObjectInfo:
        key = check_object_key(client_id, key)
        name = f"{client_id}/{key}"
        expected_digest = declared(key, expected_digest)
        # Only a declared BLAKE3 digest is the one the store records: such an upload can
        # name it in the metadata from the start.
        announced = (expected_digest is not None
                     and digest.algorithm_of(expected_digest) == digest.ALGORITHM)
        s3 = self._client()
        if create_only:
            if not announced:
                raise StorageError(f"{key}: a write-once upload must declare its digest "
                                   f"({digest.ALGORITHM})")
            self._refuse_taken(client_id, key)
        usage = 0 if self.quota_bytes is None else self._usage(client_id, replacing=name)
        intake = Intake(client_id, key, self.quota_bytes, usage, expected_size, expected_digest)
        parts = _parts(intake.take(chunks), self.part_size)
        first = next(parts)
        if len(first) < self.part_size:  # the whole object: one plain PUT
            got = intake.verify()
            condition = {"IfNoneMatch": "*"} if create_only else {}
            try:
                s3.put_object(Bucket=self.bucket, Key=name, Body=first,
                              Metadata={"digest": got}, **condition)
            except ClientError as err:
                if _code(err) in _TAKEN:
                    self._refuse_taken(client_id, key)
                raise
            return ObjectInfo(key, intake.size, got)
        held = [first]
        del first  # from here on a part is let go of once uploaded
        parts = _released_then(held, parts)
        if announced and expected_digest is not None:
            taken = (client_id, key) if create_only else None
            self._multipart(name, {"digest": expected_digest}, parts, intake, taken)
            return ObjectInfo(key, intake.size, expected_digest)
        staged = f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            self._multipart(staged, {}, parts, intake)
            got = intake.verify()
            s3.copy(
                {"Bucket": self.bucket, "Key": staged},
                self.bucket,
                name,
                ExtraArgs={"Metadata": {"digest": got}, "MetadataDirective": "REPLACE"},
                Config=COPY_TRANSFER,
            )
        finally:
            self._delete_quietly(staged)
        return ObjectInfo(key, intake.size, got)

    def _multipart(
        self,
        name: str,
        metadata: dict[str, str],
        parts: Iterator[bytearray],
        intake: Intake,
        create_only: tuple[str, str] | None = None,
    ) -> None:
        """Upload `parts` as the parts of `name`; complete it if the digest holds (and, for
        `create_only` (client, key), if the key is still free)."""
        s3 = self.s3
        upload = s3.create_multipart_upload(Bucket=self.bucket, Key=name, Metadata=metadata)
        upload_id = upload["UploadId"]
        try:
            done: list[dict[str, Any]] = []
            for part in parts:  # not enumerate(): its reused tuple would hold the last part
                if done and not part:  # the size was a whole number of parts
                    break
                number = len(done) + 1
                answer = s3.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=part
                )
                done.append({"PartNumber": number, "ETag": answer["ETag"]})
                del part  # free it before the next one is read
            intake.verify()
            condition: dict[str, str] = {}
            if create_only is not None:
                self._refuse_taken(*create_only)
                condition = {"IfNoneMatch": "*"}
            try:
                s3.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                    **condition,
                )
            except ClientError as err:
                if create_only is not None and _code(err) in _TAKEN:
                    self._refuse_taken(*create_only)
                raise
        except BaseException:
            try:
                s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            except Exception as err:  # the lifecycle rule clears it later
                log.warning("%s: abort of multipart upload %s failed: %s", name, upload_id, err)
            raise

    def _refuse_taken(self, client_id: str, key: str) -> None:
        try:
            stored = self._head(client_id, key)
        except ObjectNotFound:
            return
        raise AlreadyStored(f"{key}: already stored, and it is written once", stored)

    def _delete_quietly(self, name: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=name)
        except Exception as err:  # the lifecycle rule expires staged objects
            log.warning("%s: delete failed: %s", name, err)

    def _usage(self, client_id: str, replacing: str) -> int:
        """Bytes in the client's objects, not counting `replacing`: one LIST per 1000 objects."""
        total = 0
        pages = self.s3.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=f"{client_id}/"):
            total += sum(o["Size"] for o in page.get("Contents", []) if o["Key"] != replacing)
        return total

    def stat(self, client_id: str, key: str) -> ObjectInfo:
        key = check_object_key(client_id, key)
        self._client()
        return self._head(client_id, key)

    def _head(self, client_id: str, key: str) -> ObjectInfo:
        name = f"{client_id}/{key}"
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=name)
        except ClientError as err:
            raise _not_found(err, client_id, key) from None
        return ObjectInfo(key, head["ContentLength"], self._recorded(name, head["Metadata"]))

    def _recorded(self, name: str, metadata: dict[str, str]) -> str:
        """The digest the metadata holds (a `sha256` one from before BLAKE3 counts), or, for
        an object stored without one (written by something else than this store), its own,
        computed: read it all."""
        try:
            return digest.of_record(metadata)
        except ValueError:
            pass
        body = self.s3.get_object(Bucket=self.bucket, Key=name)["Body"]
        intake = Intake("", name, None)
        try:
            for _ in intake.take(body.iter_chunks(CHUNK)):
                pass
        finally:
            body.close()
        return intake.verify()

    def open(self, client_id: str, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        key = check_object_key(client_id, key)
        name = f"{client_id}/{key}"
        try:
            got = self._client().get_object(Bucket=self.bucket, Key=name)
        except ClientError as err:
            raise _not_found(err, client_id, key) from None
        body = got["Body"]
        info = ObjectInfo(key, got["ContentLength"], self._recorded(name, got["Metadata"]))

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return info, chunks()

    def delete(self, client_id: str, key: str) -> None:
        key = check_object_key(client_id, key)
        self._client()
        self._head(client_id, key)  # S3 deletes a missing key without a word
        self.s3.delete_object(Bucket=self.bucket, Key=f"{client_id}/{key}")

    def presign(self, method: str, client_id: str, key: str, expires_s: int) -> str:
        """A URL that lets its holder GET this one object, straight from S3, for expires_s
        (at most MAX_PRESIGN_S). There is no PUT: one would skip the quota, the declared
        digest and size, and write-once."""
        key = check_object_key(client_id, key)
        operation = PRESIGN_OPERATIONS.get(method.upper())
        if operation is None:
            raise StorageError(f"presign: method {method!r} is not GET")
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise StorageError(f"presign: expiry {expires_s}s is not within 1-{MAX_PRESIGN_S}s")
        return str(
            self._client().generate_presigned_url(
                operation,
                Params={"Bucket": self.bucket, "Key": f"{client_id}/{key}"},
                ExpiresIn=expires_s,
                HttpMethod=method.upper(),
            )
        )

    def list(self, client_id: str, prefix: str = "") -> list[ObjectInfo]:
        """The client's objects under `prefix`: one LIST per 1000, then one HEAD each for its
        digest."""
        start = f"{check_client_id(client_id)}/"
        pages = self._client().get_paginator("list_objects_v2")
        out = []
        for page in pages.paginate(Bucket=self.bucket, Prefix=f"{start}{prefix}"):
            for obj in page.get("Contents", []):
                try:
                    out.append(self._head(client_id, obj["Key"][len(start) :]))
                except ObjectNotFound:  # deleted since the listing
                    continue
        return out


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytearray]:
    """The stream regrouped into parts of `size` bytes, the last one shorter, perhaps empty.

    Each part is a buffer of its own, filled without copying chunks whole, so a
    caller that lets go of one part before asking for the next holds one at a time.
    """
    part = bytearray()
    for chunk in chunks:
        view = memoryview(chunk)
        while len(part) + len(view) >= size:
            need = size - len(part)
            part += view[:need]
            view = view[need:]
            yield part
            part = bytearray()
        part += view
    yield part


def _released_then(held: list[bytearray], rest: Iterator[bytearray]) -> Iterator[bytearray]:
    """The part in `held`, which keeps no hold on it once taken, then `rest`."""
    yield held.pop()
    yield from rest


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _not_found(err: ClientError, client_id: str, key: str) -> Exception:
    if _code(err) in _MISSING:
        return ObjectNotFound(f"no object {key!r} in {client_id}'s storage")
    return err
