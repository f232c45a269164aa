"""Client storage over plain HTTP: streamed uploads and downloads, presigned for providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api import auth
from api.services import Services
from infra.signing import verify
from infra.storage import (
    IntegrityMismatch,
    ObjectInfo,
    ObjectNotFound,
    QuotaExceeded,
    StorageError,
)

router = APIRouter(prefix="/storage", tags=["storage"])
MAX_UPLOAD_BYTES = 64 << 30  # the most GPGPU_MAX_OBJECT_BYTES may say


class ObjectTooLarge(StorageError):
    """An upload past the per-object maximum (413)."""


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def authorise(
    services: Services,
    method: str,
    client_id: str,
    key: str,
    authorization: str | None,
    expires: int | None,
    sig: str | None,
) -> None:
    """A holder of a presigned URL for this method and key (no token needed), or a caller
    whose bearer token owns the space (auth.can_use_storage: its client id, or an admin)."""
    if sig is not None and expires is not None:
        if verify(services.settings.signing_secret, method, client_id, key, expires, sig,
                  time.time()):
            return
        raise HTTPException(403, "the presigned URL is invalid or has expired")
    caller = await services.auth.authenticate(auth.bearer(authorization))
    if caller is None:
        raise HTTPException(401, "unauthenticated: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    if not auth.can_use_storage(caller, client_id):
        raise HTTPException(403, f"storage space {client_id!r} is not yours")


def _storage_error(err: StorageError) -> HTTPException:
    if isinstance(err, ObjectNotFound):
        return HTTPException(404, str(err))
    if isinstance(err, QuotaExceeded | ObjectTooLarge):
        return HTTPException(413, str(err))
    return HTTPException(400, str(err))


def _bridge(stream: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop,
            limit: int) -> Iterator[bytes]:
    """Hand an async request body to synchronous storage code running in a thread, refusing
    it (ObjectTooLarge) once it passes `limit` bytes."""
    total = 0

    async def next_chunk() -> bytes:
        return await anext(stream)

    while True:
        try:
            chunk = asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()
        except StopAsyncIteration:
            return
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
    x_sha256: Annotated[str | None, Header()] = None,
    expires: int | None = None,
    sig: str | None = None,
) -> dict[str, object]:
    await authorise(services, "PUT", client_id, key, authorization, expires, sig)
    limit = services.settings.max_object_bytes
    length = request.headers.get("content-length")
    if length and int(length) > limit:
        raise HTTPException(413, f"upload larger than {limit} bytes (the most one object "
                                 f"may hold)")
    loop = asyncio.get_running_loop()
    body = _bridge(request.stream(), loop, limit)
    try:
        info: ObjectInfo = await asyncio.to_thread(
            services.store.put, client_id, key, body, x_sha256
        )
    except IntegrityMismatch as err:
        raise HTTPException(400, str(err)) from None
    except StorageError as err:
        raise _storage_error(err) from None
    return {"key": info.key, "sha256": info.sha256, "size": info.size}


@router.get("/{client_id}/{key:path}", dependencies=[Utf8Key])
async def get_object(
    client_id: str,
    key: str,
    services: ServicesDep,
    authorization: Authorization = None,
    expires: int | None = None,
    sig: str | None = None,
) -> StreamingResponse:
    await authorise(services, "GET", client_id, key, authorization, expires, sig)
    try:
        info, chunks = await asyncio.to_thread(services.store.open, client_id, key)
    except StorageError as err:
        raise _storage_error(err) from None
    headers = {"X-Sha256": info.sha256, "Content-Length": str(info.size)}
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)


@router.get("/{client_id}", dependencies=[Utf8Key])
async def list_objects(
    client_id: str,
    services: ServicesDep,
    authorization: Authorization = None,
    prefix: Annotated[str, Query(max_length=1024)] = "",
) -> list[dict[str, object]]:
    await authorise(services, "LIST", client_id, "", authorization, None, None)
    try:
        objects = await asyncio.to_thread(services.store.list, client_id, prefix)
    except StorageError as err:
        raise _storage_error(err) from None
    return [{"key": o.key, "size": o.size, "sha256": o.sha256} for o in objects]


@router.delete("/{client_id}/{key:path}", dependencies=[Utf8Key])
async def delete_object(
    client_id: str, key: str, services: ServicesDep, authorization: Authorization = None
) -> dict[str, str]:
    await authorise(services, "DELETE", client_id, key, authorization, None, None)
    try:
        await asyncio.to_thread(services.store.delete, client_id, key)
    except StorageError as err:
        raise _storage_error(err) from None
    return {"deleted": key}
