"""The asyncio SDK: `AsyncGpgpuClient`, the same calls and results as `GpgpuClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from client import _http, queries
from client._http import (
    CHUNK,
    ByteProgress,
    FileProgress,
    PartFile,
    bind_progress,
    file_sha256,
)
from client.config import (
    SHA256_HEADER,
    auth_headers,
    graphql_ws_url,
    resolve_api_url,
    resolve_token,
    storage_url,
)
from client.errors import ApiError, ApiUnreachable, GpgpuError, SpecRejectedError
from client.models import (
    Account,
    Job,
    JobEvent,
    JobLogChunk,
    Node,
    Provider,
    ProviderEarnings,
    QueuedJob,
    StoredObject,
    User,
)
from client.specfile import plan_spec_file
from client.subscription import (
    RECONNECT_WINDOW_S,
    SUBPROTOCOL,
    JobEventsSession,
    JobLogSession,
    backoff_s,
    close_error,
)


class AsyncGpgpuClient:
    def __init__(
        self,
        api_url: str | None = None,
        client_id: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnect_window_s: float = RECONNECT_WINDOW_S,
    ):
        self.api_url = resolve_api_url(api_url)
        # Sent as `Authorization: Bearer`: api_key, GPGPU_API_KEY, or what `gpgpu login` saved.
        self.token = resolve_token(self.api_url, api_key)
        # Whose storage space: given (an admin may name any), else the caller's own (`me`).
        self.client_id = client_id
        self.reconnect_window_s = reconnect_window_s
        self._http = httpx.AsyncClient(
            headers=auth_headers(self.token),
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGpgpuClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, url: str, what: str = "", **kw: Any) -> httpx.Response:
        try:
            resp = await self._http.request(method, url, **kw)
        except httpx.TransportError as err:
            raise _http.transport_error(self.api_url, err) from None
        _http.check_status(resp.status_code, resp.content, what)
        return resp

    async def _graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = await self._http.post(
                f"{self.api_url}/graphql", json={"query": query, "variables": variables or {}}
            )
        except httpx.TransportError as err:
            raise _http.transport_error(self.api_url, err) from None
        return _http.graphql_data(resp.status_code, resp.content)


    # -- accounts ---------------------------------------------------------

    async def _space(self) -> str:
        """The storage space calls act on: the one given, else the caller's own client id."""
        if self.client_id is None:
            self.client_id = _http.own_space(await self._graphql(queries.ME))
        return self.client_id

    async def me(self) -> User | None:
        found = (await self._graphql(queries.ME)).get("me")
        return None if found is None else User.from_json(found)

    async def sign_in(self, email: str, password: str) -> tuple[str, User]:
        data = await self._graphql(queries.SIGN_IN, {"email": email, "password": password})
        token, user = _http.parse_session(data, "signIn")
        self._use(token)
        return token, user

    def _use(self, token: str) -> None:
        self.token = token
        self._http.headers.update(auth_headers(token))

    async def change_password(self, current: str, new: str) -> tuple[str, User]:
        data = await self._graphql(queries.CHANGE_PASSWORD, {"current": current, "new": new})
        token, user = _http.parse_session(data, "changePassword")
        self._use(token)
        return token, user

    async def reset_password(self, email: str) -> str:
        data = await self._graphql(queries.RESET_PASSWORD, {"email": email})
        return str(data["resetPassword"])

    async def add_roles(self, roles: list[str]) -> User:
        data = await self._graphql(queries.ADD_ROLES, {"roles": roles})
        return User.from_json(data["addRoles"])

    async def revoke_role(self, email: str, role: str) -> User:
        data = await self._graphql(queries.REVOKE_ROLE, {"email": email, "role": role})
        return User.from_json(data["revokeRole"])

    async def submit_job(self, spec: dict[str, Any]) -> Job:
        return _http.parse_submit(await self._graphql(queries.SUBMIT_JOB, {"spec": spec}))

    async def job(self, job_id: str) -> Job:
        return _http.parse_job(await self._graphql(queries.JOB, {"id": job_id}), job_id)

    async def cancel_job(self, job_id: str) -> Job:
        data = await self._graphql(queries.CANCEL_JOB, {"id": job_id})
        return Job.from_json(data["cancelJob"])

    async def jobs(self, limit: int = 50) -> list[Job]:
        return _http.parse_jobs(await self._graphql(queries.JOBS, {"limit": limit}))

    async def account(self) -> Account:
        return _http.parse_account(await self._graphql(queries.ACCOUNT))

    async def providers(self) -> list[Provider]:
        return _http.parse_providers(await self._graphql(queries.PROVIDERS))

    # -- providers' own controls and nodes --------------------------------

    async def provider(self, provider_id: str, samples: int = 0) -> Provider:
        """One provider, with its GPUs' status and its last `samples` telemetry readings."""
        data = await self._graphql(queries.PROVIDER, {"id": provider_id, "samples": samples})
        return _http.parse_provider(data, "provider", provider_id)

    async def provider_earnings(self, provider_id: str, limit: int = 100) -> ProviderEarnings:
        data = await self._graphql(
            queries.PROVIDER_EARNINGS, {"id": provider_id, "limit": limit}
        )
        return _http.parse_earnings(data)

    async def suspend_gpu(self, provider_id: str, index: int) -> Provider:
        """Take a GPU out of service: no new work; a job on it finishes."""
        data = await self._graphql(queries.SUSPEND_GPU, {"id": provider_id, "index": index})
        return _http.parse_provider(data, "suspendGpu", provider_id)

    async def resume_gpu(self, provider_id: str, index: int) -> Provider:
        data = await self._graphql(queries.RESUME_GPU, {"id": provider_id, "index": index})
        return _http.parse_provider(data, "resumeGpu", provider_id)

    async def set_price(self, provider_id: str, credits: str | int | float) -> Provider:
        """The provider's price per GPU-hour, in credits ("2.5"), for jobs placed from now."""
        variables = {"id": provider_id, "price": _http.price_text(credits)}
        data = await self._graphql(queries.SET_PRICE, variables)
        return _http.parse_provider(data, "setPrice", provider_id)

    async def nodes(self) -> list[Node]:
        return _http.parse_nodes(await self._graphql(queries.NODES))

    async def configure_queue(
        self,
        node_id: str,
        name: str,
        gpu_models: list[str],
        priority_levels: int = 1,
        max_gpus_per_client: int = 0,
        fair_share: bool = True,
    ) -> None:
        """Create or change a queue (every setting: what is left out takes its default)."""
        await self._graphql(queries.CONFIGURE_QUEUE, _http.queue_variables(
            node_id, name, gpu_models, priority_levels, max_gpus_per_client, fair_share
        ))

    async def queue(self, name: str = "local/default", limit: int = 100) -> list[QueuedJob]:
        """A queue's waiting jobs in the order the scheduler places them."""
        return _http.parse_queue(await self._graphql(queries.QUEUE, {"name": name, "limit": limit}))

    async def submit_spec_file(self, path: str | Path, progress: FileProgress | None = None) -> Job:
        plan = await asyncio.to_thread(plan_spec_file, Path(path))
        for item in plan.uploads:
            await self.upload(item.local, item.key, bind_progress(progress, item.key))
        try:
            return await self.submit_job(plan.spec)
        except SpecRejectedError as err:
            raise err.with_source(str(path)) from None

    async def follow(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """Every event of the job with seq > after, in order, until its terminal event.

        A dropped connection is reopened, resuming after the last event seen.
        """
        async for event in self._follow(job_id, after, JobEventsSession):
            yield event

    async def follow_log(self, job_id: str, after: int = 0) -> AsyncIterator[JobLogChunk]:
        """The job's output as its runs print it, chunk by chunk after seq `after`, until
        the job has ended (the job's owner only); resumes as `follow` does."""
        async for chunk in self._follow(job_id, after, JobLogSession):
            yield chunk

    async def _follow(self, job_id: str, after: int, kind: type[JobEventsSession]
                      ) -> AsyncIterator[Any]:
        uri = graphql_ws_url(self.api_url)
        last = after
        down_since: float | None = None
        failures = 0
        connected = False
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with ws_connect(
                    uri,
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    additional_headers=auth_headers(self.token),
                    open_timeout=10,
                ) as ws:
                    connected = True
                    session = kind(self.token, job_id, last)
                    await ws.send(session.init_message())
                    async for raw in ws:
                        step = session.handle(raw)
                        if step.reply is not None:
                            await ws.send(step.reply)
                        if session.acked:
                            down_since, failures = None, 0
                        item = step.event or step.chunk
                        if item is not None and item.seq > last:
                            last = item.seq
                            yield item
                            if getattr(item, "terminal", False):
                                return
                        if step.done:
                            return
                    if fatal := close_error(ws.close_code, ws.close_reason):
                        raise fatal
            except ConnectionClosed as err:
                code = err.rcvd.code if err.rcvd else None
                if fatal := close_error(code, err.rcvd.reason if err.rcvd else None):
                    raise fatal from None
            except InvalidStatus as err:
                status = err.response.status_code
                if 400 <= status < 500:
                    raise ApiError(status, f"subscription refused at {uri}") from None
                if not connected:
                    raise ApiUnreachable(self.api_url, str(err)) from None
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as err:
                if not connected:
                    raise ApiUnreachable(self.api_url, str(err)) from None
            now = loop.time()
            down_since = down_since or now
            if now - down_since > self.reconnect_window_s:
                raise ApiUnreachable(self.api_url, "the event stream dropped and did not come back")
            failures += 1
            await asyncio.sleep(backoff_s(failures))

    async def upload(
        self, path: str | Path, key: str, progress: ByteProgress | None = None
    ) -> StoredObject:
        local = Path(path)
        try:
            sha256, size = await asyncio.to_thread(file_sha256, local)
        except OSError as err:
            raise GpgpuError(f"{local}: cannot read: {err.strerror or err}") from None

        async def chunks() -> AsyncIterator[bytes]:
            done = 0
            with local.open("rb") as f:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    done += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(done, size)

        if progress is not None:
            progress(0, size)
        resp = await self._request(
            "PUT",
            storage_url(self.api_url, await self._space(), key),
            content=chunks(),
            headers={SHA256_HEADER: sha256, "Content-Length": str(size)},
        )
        return StoredObject.from_json(resp.json())

    async def download(
        self,
        key: str,
        dest: str | Path,
        progress: ByteProgress | None = None,
        expected_sha256: str | None = None,
    ) -> StoredObject:
        url = storage_url(self.api_url, await self._space(), key)
        try:
            async with self._http.stream("GET", url) as resp:
                if resp.status_code >= 400:
                    body = await resp.aread()
                    _http.check_status(resp.status_code, body, f"object {key!r}")
                promised = resp.headers.get(SHA256_HEADER)
                if not promised:
                    raise ApiError(resp.status_code, f"{key}: the API sent no {SHA256_HEADER}")
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                part = PartFile(Path(dest))
                try:
                    async for chunk in resp.aiter_bytes(CHUNK):
                        part.write(chunk)
                        if progress is not None:
                            progress(part.size, total)
                    promises = [promised, *([expected_sha256] if expected_sha256 else [])]
                    sha = part.commit(key, promises)
                except BaseException:
                    part.discard()
                    raise
        except httpx.TransportError as err:
            raise _http.transport_error(self.api_url, err) from None
        return StoredObject(key=key, size=part.size, sha256=sha)

    async def list_objects(self, prefix: str = "") -> list[StoredObject]:
        resp = await self._request(
            "GET", storage_url(self.api_url, await self._space()), params={"prefix": prefix}
        )
        return [StoredObject.from_json(o) for o in resp.json()]

    async def delete(self, key: str) -> None:
        await self._request(
            "DELETE", storage_url(self.api_url, await self._space(), key), f"object {key!r}"
        )
