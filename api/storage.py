"""Client storage over plain HTTP: streamed uploads and downloads, with grants for providers.

Two ways in. A client (or an admin) with its bearer token reads and writes its own
space, except `jobs/`: that prefix is the control plane's (runs' outputs and
checkpoints), which the client may read but never write or delete. A provider
holds grants (infra/signing.py): each allows one method on one key for one run,
for minutes, and only while that run is live (its job not ended, the attempt
still this provider's, not lost; a PUT only until the run reported its outputs).
A PUT through a grant must declare the body's BLAKE3 digest (X-Digest:
blake3:<hex>, protocol/digest.py) and size (Content-Length); the store refuses a
body that differs and keeps nothing. A client may declare a digest too (or, as
clients before BLAKE3 did, an X-Sha256, checked on the same pass). A run's output
grant writes once: a second PUT to the key is refused (409) and changes nothing.
What the store computed on the way in is what verification reads. A GET answers
with the recorded digest in X-Digest.

Bodies move in large pieces (protocol.digest.CHUNK_BYTES): an upload is handed to
the storage thread a few MiB at a time, a download read from storage in such
pieces, so that the per-piece hops between the event loop and the threads cost
little next to the bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api import auth
from api.services import Services
from domain.errors import DomainError, UnknownJob
from domain.outputs import output_path, refused_for_quota
from domain.states import TERMINAL_STATES
from infra.signing import METHODS, Grant, GrantRefused, check, grant_url, parse_grant
from infra.storage import (
    CHUNK,
    AlreadyStored,
    IntegrityMismatch,
    ObjectInfo,
    ObjectNotFound,
    QuotaExceeded,
    StorageError,
)
from protocol import digest

log = logging.getLogger(__name__)
router = APIRouter(prefix="/storage", tags=["storage"])
MAX_UPLOAD_BYTES = 64 << 30  # the most GPGPU_MAX_OBJECT_BYTES may say


class ObjectTooLarge(StorageError):
    """An upload past the per-object maximum (413)."""
# Keys the control plane writes (runs' outputs, checkpoints): a client reads them, never
# writes or deletes them; only a run's grant does.
RESERVED_PREFIX = "jobs/"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
DIGEST_HEADER = "X-Digest"


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def run_refusal(services: Services, grant: Grant) -> str | None:
    """Why the run a grant belongs to may no longer use it; None while it may."""
    try:
        job = services.network.job(grant.job_id)
    except UnknownJob:
        return f"no job {grant.job_id}"
    if job.client_id != grant.client_id:
        return f"job {grant.job_id} is not in storage space {grant.client_id!r}"
    if job.state in TERMINAL_STATES:
        return f"job {grant.job_id} has ended ({job.state})"
    if job.allocations.get(grant.attempt) != grant.provider_id:
        return f"attempt {grant.attempt} of job {grant.job_id} is not {grant.provider_id}'s"
    if job.ran_elsewhere(grant.attempt):
        return (f"attempt {grant.attempt} of job {grant.job_id} has ended (its provider was "
                "lost or failed it)")
    if grant.method == "PUT" and f"outputs_uploaded:{grant.attempt}" in job.recorded:
        return f"attempt {grant.attempt} of job {grant.job_id} has reported its outputs"
    return None


async def granted(
    services: Services, method: str, client_id: str, key: str, request: Request, sig: str
) -> Grant:
    """The grant this request carries, refused (403) unless it is the network's, in force,
    for this method and key, and its run is live."""
    try:
        grant = parse_grant(method, client_id, key, dict(request.query_params))
        check(services.settings.signing_secret, grant, sig, time.time(),
              services.settings.grant_max_s)
    except GrantRefused as err:
        raise HTTPException(403, f"grant refused: {err}") from None
    refusal = await asyncio.to_thread(run_refusal, services, grant)
    if refusal is not None:
        raise HTTPException(403, f"grant refused: {refusal}")
    return grant


async def authorise(
    services: Services, method: str, client_id: str, key: str, authorization: str | None
) -> None:
    """A caller whose bearer token owns the space (auth.can_use_storage: its client id, or
    an admin); writes never under RESERVED_PREFIX."""
    caller = await services.auth.authenticate(auth.bearer(authorization))
    if caller is None:
        raise HTTPException(401, "unauthenticated: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    if not auth.can_use_storage(caller, client_id):
        raise HTTPException(403, f"storage space {client_id!r} is not yours")
    if method in ("PUT", "DELETE") and (
        key.startswith(RESERVED_PREFIX) or key == RESERVED_PREFIX.rstrip("/")
    ):
        raise HTTPException(
            403, f"{key}: keys under {RESERVED_PREFIX!r} are written by the network's runs only"
        )


async def grant_holder(services: Services, provider_id: str, authorization: str | None) -> None:
    """401 without a valid token; 403 unless it is a provider key of the grant's provider's
    owner (asked again once: a provider registered through another replica just now)."""
    token = auth.bearer(authorization)
    caller = await services.auth.authenticate(token)
    if caller is None:
        raise HTTPException(401, "unauthenticated: a grant is renewed with its provider's key"
                                 " (Authorization: Bearer <API key>)",
                            headers={"WWW-Authenticate": "Bearer"})
    if not auth.holds_provider_key(caller, provider_id):
        caller = await services.auth.authenticate(token, fresh=True)
        if not auth.holds_provider_key(caller, provider_id):
            raise HTTPException(403, f"grant refused: only provider {provider_id!r}'s own key"
                                     " renews its grants")


def _storage_error(err: StorageError) -> HTTPException:
    if isinstance(err, ObjectNotFound):
        return HTTPException(404, str(err))
    if isinstance(err, QuotaExceeded | ObjectTooLarge):
        return HTTPException(413, str(err))
    if isinstance(err, AlreadyStored):
        stored = err.stored
        return HTTPException(409, {"message": str(err), "key": stored.key,
                                   "digest": stored.digest, "size": stored.size})
    return HTTPException(400, str(err))


def _bridge(stream: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop,
            limit: int, group: int = CHUNK) -> Iterator[bytes]:
    """Hand an async request body to synchronous storage code running in a thread, refusing
    it (ObjectTooLarge) once it passes `limit` bytes.

    The server hands the body over in the pieces it received (tens of KiB); the thread
    asks the event loop for the next `group` bytes' worth of them at a time, not one."""
    total = 0

    async def next_chunks() -> list[bytes]:
        got: list[bytes] = []
        size = 0
        async for chunk in stream:
            got.append(chunk)
            size += len(chunk)
            if size >= group:
                break
        return got

    while True:
        chunks = asyncio.run_coroutine_threadsafe(next_chunks(), loop).result()
        if not chunks:
            return
        for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise ObjectTooLarge(f"upload larger than {limit} bytes (the most one object "
                                     f"may hold)")
            if chunk:
                yield chunk


def utf8_key(request: Request) -> None:
    """Refuse a path whose percent-escapes are not UTF-8 (`%ff%fe`): Starlette decodes them
    to U+FFFD, and the object would be stored under a key the client never sent."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    try:
        unquote_to_bytes(raw.decode("latin-1")).decode("utf-8")
    except UnicodeDecodeError as err:
        raise HTTPException(400, f"key: its percent-escapes are not UTF-8 text ({err.reason} "
                            f"at byte {err.start} of the decoded path)") from None


Authorization = Annotated[str | None, Header()]
Utf8Key = Depends(utf8_key)


@router.put("/{client_id}/{key:path}", dependencies=[Utf8Key])
async def put_object(
    client_id: str,
    key: str,
    request: Request,
    services: ServicesDep,
    authorization: Authorization = None,
    x_digest: Annotated[str | None, Header()] = None,
    x_sha256: Annotated[str | None, Header()] = None,
    sig: str | None = None,
) -> dict[str, object]:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 19):
        raise HTTPException(400, "Content-Length: not a whole number of bytes")
    size = None if length is None else int(length)
    limit = services.settings.max_object_bytes
    if size is not None and size > limit:
        raise HTTPException(413, f"upload larger than {limit} bytes (the most one object "
                                 f"may hold)")
    once, grant = False, None
    if sig is not None:
        grant = await granted(services, "PUT", client_id, key, request, sig)
        declared = _declared(x_digest, x_sha256)
        if declared is None or digest.algorithm_of(declared) != digest.ALGORITHM:
            raise HTTPException(400, f"{DIGEST_HEADER}: a PUT through a grant declares the "
                                     f"body's digest ({digest.ALGORITHM}: and 64 hex digits)")
        if size is None:
            raise HTTPException(411, "Content-Length: a PUT through a grant declares its size")
        if size > grant.size:
            raise HTTPException(413, f"upload of {size} bytes is over the grant's {grant.size}")
        once = grant.once
    else:
        await authorise(services, "PUT", client_id, key, authorization)
        declared = _declared(x_digest, x_sha256)
    loop = asyncio.get_running_loop()
    body = _bridge(request.stream(), loop, limit)
    try:
        info: ObjectInfo = await asyncio.to_thread(
            lambda: services.store.put(client_id, key, body, declared, expected_size=size,
                                       create_only=once)
        )
    except IntegrityMismatch as err:
        raise HTTPException(400, str(err)) from None
    except StorageError as err:
        if isinstance(err, QuotaExceeded) and grant is not None and size is not None:
            await asyncio.to_thread(note_refusal, services, grant, size, declared or "", err)
        raise _storage_error(err) from None
    return {"key": info.key, "digest": info.digest, "size": info.size}


def note_refusal(services: Services, grant: Grant, size: int, declared: str,
                 err: QuotaExceeded) -> None:
    """Record on the job that the client's quota refused a run's output (domain/outputs.py):
    the network's own witness, which verification reads (a run whose missing output storage
    refused so does not vote). Only a run's write-once output grant, only where the declared
    size would have fit the whole quota but not beside what the space held, and once per
    output however often the PUT is repeated (the domain records it once)."""
    if not grant.once or not refused_for_quota(size, err.quota_bytes, err.usage):
        return
    try:
        job = services.network.job(grant.job_id)
        path = output_path(grant.job_id, grant.attempt, grant.key, job.spec.get("outputs", []))
        if path is None or path in job.refused_outputs(grant.attempt):
            return
        services.network.record_output_refused(
            grant.job_id, grant.attempt, path, grant.provider_id, size, declared,
            err.quota_bytes, err.usage, str(err))
    except DomainError as refused:  # the run ended, or reported its outputs, meanwhile
        log.info("storage refusal of %s not recorded: %s", grant.key, refused)


def _declared(x_digest: str | None, x_sha256: str | None) -> str | None:
    """The digest the uploader declared: X-Digest, or a bare sha256 in X-Sha256 (clients
    from before BLAKE3); 400 naming the header when it is malformed or both are sent."""
    if x_digest is not None and x_sha256 is not None:
        raise HTTPException(400, f"{DIGEST_HEADER}: send it or X-Sha256, not both")
    if x_sha256 is not None:
        if not _SHA256.fullmatch(x_sha256):
            raise HTTPException(400, "X-Sha256: not 64 hex digits")
        return f"sha256:{x_sha256.lower()}"
    if x_digest is None:
        return None
    try:
        return digest.normal(x_digest)
    except ValueError as err:
        raise HTTPException(400, f"{DIGEST_HEADER}: {err}") from None


@router.post("/{client_id}/{key:path}", dependencies=[Utf8Key])
async def renew_grant(
    client_id: str,
    key: str,
    request: Request,
    services: ServicesDep,
    sig: str,
    x_grant_method: Annotated[str, Header()] = "GET",
    authorization: Authorization = None,
) -> dict[str, object]:
    """The same grant with a fresh deadline (now + grant_max_s), while its run is live: a run
    longer than a grant renews its grants as it goes. An ended run's grant is refused, and
    only the provider the grant was made for renews it (its own provider key): a grant
    that leaked from a provider, a log or a history is good until it expires, no longer."""
    method = x_grant_method.upper()
    if method not in METHODS:
        raise HTTPException(400, f"X-Grant-Method: {x_grant_method!r} is not one of GET, PUT")
    settings = services.settings
    try:
        grant = parse_grant(method, client_id, key, dict(request.query_params))
        check(settings.signing_secret, grant, sig, grant.expires, settings.grant_max_s)
    except GrantRefused as err:
        raise HTTPException(403, f"grant refused: {err}") from None
    await grant_holder(services, grant.provider_id, authorization)
    refusal = await asyncio.to_thread(run_refusal, services, grant)
    if refusal is not None:
        raise HTTPException(403, f"grant refused: {refusal}")
    fresh = dataclasses.replace(grant, expires=int(time.time()) + settings.grant_max_s)
    return {"url": grant_url(settings.signing_secret, settings.api_url, fresh),
            "expires": fresh.expires}


@router.get("/{client_id}/{key:path}", dependencies=[Utf8Key])
async def get_object(
    client_id: str,
    key: str,
    request: Request,
    services: ServicesDep,
    authorization: Authorization = None,
    sig: str | None = None,
) -> StreamingResponse:
    grant = None
    if sig is not None:
        grant = await granted(services, "GET", client_id, key, request, sig)
    else:
        await authorise(services, "GET", client_id, key, authorization)
    try:
        info, chunks = await asyncio.to_thread(services.store.open, client_id, key)
    except StorageError as err:
        raise _storage_error(err) from None
    if grant is not None and grant.digest and (info.digest, info.size) != (
        grant.digest, grant.size
    ):
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        raise HTTPException(409, f"{key}: the object is not the one the grant names")
    headers = {DIGEST_HEADER: info.digest, "Content-Length": str(info.size)}
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@router.get("/{client_id}", dependencies=[Utf8Key])
async def list_objects(
    client_id: str,
    services: ServicesDep,
    authorization: Authorization = None,
    prefix: Annotated[str, Query(max_length=1024)] = "",
) -> list[dict[str, object]]:
    await authorise(services, "LIST", client_id, "", authorization)
    try:
        objects = await asyncio.to_thread(services.store.list, client_id, prefix)
    except StorageError as err:
        raise _storage_error(err) from None
    return [{"key": o.key, "size": o.size, "digest": o.digest} for o in objects]


@router.delete("/{client_id}/{key:path}", dependencies=[Utf8Key])
async def delete_object(
    client_id: str, key: str, services: ServicesDep, authorization: Authorization = None
) -> dict[str, str]:
    await authorise(services, "DELETE", client_id, key, authorization)
    try:
        await asyncio.to_thread(services.store.delete, client_id, key)
    except StorageError as err:
        raise _storage_error(err) from None
    return {"deleted": key}
