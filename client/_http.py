"""What both clients share: HTTP and GraphQL answers turned into results or errors."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from client.config import DIGEST_HEADER, LEGACY_SHA256_HEADER
from client.errors import (
    ApiError,
    ApiUnreachable,
    BadInput,
    GpgpuError,
    IntegrityError,
    NotFoundError,
    RefusedError,
    SpecRejectedError,
)
from client.models import Account, Job, Node, Provider, ProviderEarnings, QueuedJob, User
from protocol import digest
from protocol.money import micro_to_credits, price_to_micro

CHUNK = digest.CHUNK_BYTES
ByteProgress = Callable[[int, int | None], None]  # (bytes done, total if known)
FileProgress = Callable[[str, int, int | None], None]  # (key, bytes done, total)


def bind_progress(progress: FileProgress | None, key: str) -> ByteProgress | None:
    if progress is None:
        return None
    return lambda done, total: progress(key, done, total)


def error_detail(body: bytes) -> str:
    """The human part of an error answer: FastAPI's {"detail": ...} or the raw text."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500] or "no detail"
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # FastAPI validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', d)}"
                if isinstance(d, dict)
                else str(d)
                for d in detail
            )
        return json.dumps(detail)
    if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
        return graphql_errors_text(payload["errors"])
    return json.dumps(payload)[:500]


def transport_error(api_url: str, err: httpx.TransportError) -> GpgpuError:
    """Could not connect at all, or the connection broke during a request."""
    if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.UnsupportedProtocol):
        return ApiUnreachable(api_url, str(err))
    return ApiError(0, f"the GPGPU API at {api_url} stopped answering: {type(err).__name__} {err}")


def check_status(status: int, body: bytes, what: str = "") -> None:
    if status < 400:
        return
    if status == 404 and what:
        raise NotFoundError(what)
    raise ApiError(status, error_detail(body))


def graphql_errors_text(errors: list[Any]) -> str:
    return (
        "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
        or "unknown GraphQL error"
    )


def graphql_data(status: int, body: bytes) -> dict[str, Any]:
    """The `data` of a GraphQL answer, or ApiError with the server's messages."""
    check_status(status, body)
    try:
        payload = json.loads(body)
    except ValueError:
        raise ApiError(status, f"not a GraphQL answer: {body[:200]!r}") from None
    if payload.get("errors"):
        # The API's own words ("gpu_index: p1 has no GPU 7"), without an "API error 200".
        text = graphql_errors_text(payload["errors"])
        raise ApiError(status, text, text if status == 200 else None)
    data = payload.get("data")
    if not isinstance(data, dict):
        raise ApiError(status, "GraphQL answer without data")
    return data


def result(data: dict[str, Any], key: str) -> Any:
    """The answer of a mutation whose result is `<payload> | FieldError`: the payload, or
    RefusedError where the API refused the request."""
    answer = data[key]
    if isinstance(answer, dict) and answer.get("__typename") == "FieldError":
        raise RefusedError(str(answer["field"]), str(answer["message"]))
    return answer


def parse_job(data: dict[str, Any], job_id: str) -> Job:
    if data.get("job") is None:
        raise NotFoundError(f"job {job_id}")
    return Job.from_json(data["job"])


def parse_jobs(data: dict[str, Any]) -> list[Job]:
    return [Job.from_json(j) for j in data["jobs"]]


def parse_account(data: dict[str, Any]) -> Account:
    return Account.from_json(data["account"])


def parse_providers(data: dict[str, Any]) -> list[Provider]:
    return [Provider.from_json(p) for p in data["providers"]]


def parse_provider(data: dict[str, Any], key: str, provider_id: str) -> Provider:
    result(data, key)
    if data.get(key) is None:
        raise NotFoundError(f"provider {provider_id}")
    return Provider.from_json(data[key])


def parse_earnings(data: dict[str, Any]) -> ProviderEarnings:
    return ProviderEarnings.from_json(data["providerEarnings"])


def parse_nodes(data: dict[str, Any]) -> list[Node]:
    return [Node.from_json(n) for n in data["nodes"]]


def parse_queue(data: dict[str, Any]) -> list[QueuedJob]:
    return [QueuedJob.from_json(q) for q in data["queue"]]


def price_text(credits: str | int | float) -> str:
    """A price in credits, checked here so a typo is answered before any request."""
    try:
        micro = price_to_micro(credits)
    except ValueError as err:
        raise BadInput(f"price: {err}") from None
    return micro_to_credits(micro)  # the form the API takes (a float's str may be "1e-05")


def queue_variables(
    node_id: str, name: str, gpu_models: list[str], priority_levels: int,
    max_gpus_per_client: int, fair_share: bool,
) -> dict[str, Any]:
    return {"node": node_id, "name": name, "models": gpu_models, "levels": priority_levels,
            "cap": max_gpus_per_client, "fair": fair_share}


def parse_submit(data: dict[str, Any]) -> Job:
    result = data["submitJob"]
    kind = result.get("__typename")
    if kind == "SpecRejected" or "errors" in result:
        raise SpecRejectedError([(e["field"], e["message"]) for e in result["errors"]])
    if kind not in (None, "JobSubmitted") or "job" not in result:
        raise ApiError(200, f"unexpected submitJob answer: {kind}")
    return Job.from_json({**result["job"], "warnings": result.get("warnings") or []})


def file_digest(path: Path) -> tuple[str, int]:
    """The digest ("blake3:<hex>") and size of a local file."""
    return digest.of_file(path)


def promises(key: str, headers: httpx.Headers, expected: str | None) -> list[str]:
    """The digests a download must have: the API's (X-Digest, or an older API's X-Sha256)
    and the caller's `expected`, each in its written form."""
    sent = headers.get(DIGEST_HEADER) or headers.get(LEGACY_SHA256_HEADER)
    if not sent:
        raise ApiError(200, f"{key}: the API sent no {DIGEST_HEADER}")
    try:
        return [digest.normal(v) for v in (sent, *([expected] if expected else []))]
    except ValueError as err:
        raise IntegrityError(f"{key}: {err}") from None


class PartFile:
    """A download in progress: bytes go to a hidden temp file beside the destination,
    hashed as they arrive (with each algorithm a promised digest is in), and only a
    verified file is renamed into place."""

    def __init__(self, dest: Path, promised: list[str]):
        self.dest = dest
        self.promised = promised
        self.digesters = {digest.algorithm_of(p): digest.Digester.like(p) for p in promised}
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        self.tmp = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        for d in self.digesters.values():
            d.update(chunk)
        self.size += len(chunk)

    def commit(self, key: str) -> str:
        """Check the bytes against every promised digest, then rename into place; the
        first promised (the API's)."""
        self.file.close()
        for expected in self.promised:
            actual = self.digesters[digest.algorithm_of(expected)].value()
            if actual != expected:
                raise IntegrityError(
                    f"{key}: downloaded bytes have digest {actual}, expected {expected}"
                )
        os.replace(self.tmp, self.dest)
        return self.promised[0]

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def parse_session(data: dict[str, Any], key: str) -> tuple[str, User]:
    session = result(data, key)
    return str(session["token"]), User.from_json(session["user"])


def own_space(data: dict[str, Any]) -> str:
    """The caller's client id from `me`, or why there is none."""
    me = data.get("me")
    if me is None:
        raise GpgpuError("not signed in: run `gpgpu login`, or set GPGPU_API_KEY to an API key")
    if not me.get("clientId"):
        raise GpgpuError(f"{me.get('email')} has no client role here: no storage space or jobs")
    return str(me["clientId"])
