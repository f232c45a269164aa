"""The synchronous SDK: `GpgpuClient` over httpx and a graphql-transport-ws websocket.

with GpgpuClient() as gp:
    job = gp.submit_spec_file("examples/hello/job.yaml")
    for event in gp.follow(job.id):
        print(event.seq, event.type)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import connect as ws_connect
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
    ApiKey,
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
from client.specfile import load_spec_file, plan_spec_file
from client.subscription import (
    RECONNECT_WINDOW_S,
    SUBPROTOCOL,
    JobEventsSession,
    JobLogSession,
    backoff_s,
    close_error,
)


class GpgpuClient:
    def __init__(
        self,
        api_url: str | None = None,
        client_id: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        reconnect_window_s: float = RECONNECT_WINDOW_S,
    ):
        self.api_url = resolve_api_url(api_url)
        # Sent as `Authorization: Bearer`: api_key, GPGPU_API_KEY, or what `gpgpu login` saved.
        self.token = resolve_token(self.api_url, api_key)
        # Whose storage space: given (an admin may name any), else the caller's own (`me`).
        self.client_id = client_id
        self.reconnect_window_s = reconnect_window_s
        self._http = httpx.Client(
            headers=auth_headers(self.token),
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GpgpuClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------

    def _request(self, method: str, url: str, what: str = "", **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, url, **kw)
        except httpx.TransportError as err:
            raise _http.transport_error(self.api_url, err) from None
        _http.check_status(resp.status_code, resp.content, what)
        return resp

    def _graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self._http.post(
                f"{self.api_url}/graphql", json={"query": query, "variables": variables or {}}
            )
        except httpx.TransportError as err:
            raise _http.transport_error(self.api_url, err) from None
        return _http.graphql_data(resp.status_code, resp.content)


    # -- accounts ---------------------------------------------------------

    def _space(self) -> str:
        """The storage space calls act on: the one given, else the caller's own client id."""
        if self.client_id is None:
            self.client_id = _http.own_space(self._graphql(queries.ME))
        return self.client_id

    def me(self) -> User | None:
        found = self._graphql(queries.ME).get("me")
        return None if found is None else User.from_json(found)

    def sign_up(self, email: str, password: str, roles: list[str]) -> tuple[str, User]:
        """A new account; its session token is used from now on (and returned)."""
        variables = {"email": email, "password": password, "roles": roles}
        token, user = _http.parse_session(self._graphql(queries.SIGN_UP, variables), "signUp")
        self._use(token)
        return token, user

    def sign_in(self, email: str, password: str) -> tuple[str, User]:
        data = self._graphql(queries.SIGN_IN, {"email": email, "password": password})
        token, user = _http.parse_session(data, "signIn")
        self._use(token)
        return token, user

    def sign_out(self) -> bool:
        return bool(self._graphql(queries.SIGN_OUT)["signOut"])

    def change_password(self, current: str, new: str) -> tuple[str, User]:
        """A new password: the account's other sessions end; this client uses the new one."""
        data = self._graphql(queries.CHANGE_PASSWORD, {"current": current, "new": new})
        token, user = _http.parse_session(data, "changePassword")
        self._use(token)
        return token, user

    def reset_password(self, email: str) -> str:
        """Admin: a temporary password for someone locked out (every session of theirs ends)."""
        return str(self._graphql(queries.RESET_PASSWORD, {"email": email})["resetPassword"])

    def add_roles(self, roles: list[str]) -> User:
        """Take on more roles (client, provider, operator); the account as it is now."""
        return User.from_json(self._graphql(queries.ADD_ROLES, {"roles": roles})["addRoles"])

    def revoke_role(self, email: str, role: str) -> User:
        """Admin: take a role from an account (it keeps one at least)."""
        data = self._graphql(queries.REVOKE_ROLE, {"email": email, "role": role})
        return User.from_json(data["revokeRole"])

    def create_api_key(self, name: str, scopes: list[str]) -> ApiKey:
        """A new key (its `key` is in this answer only)."""
        data = self._graphql(queries.CREATE_API_KEY, {"name": name, "scopes": scopes})
        return ApiKey.from_json(data["createApiKey"])

    def api_keys(self) -> list[ApiKey]:
        return [ApiKey.from_json(k) for k in self._graphql(queries.API_KEYS)["apiKeys"]]

    def revoke_api_key(self, key_id: str) -> bool:
        return bool(self._graphql(queries.REVOKE_API_KEY, {"id": key_id})["revokeApiKey"])

    def _use(self, token: str) -> None:
        self.token = token
        self._http.headers.update(auth_headers(token))

    # -- jobs -------------------------------------------------------------

    def submit_job(self, spec: dict[str, Any]) -> Job:
        return _http.parse_submit(self._graphql(queries.SUBMIT_JOB, {"spec": spec}))

    def job(self, job_id: str) -> Job:
        return _http.parse_job(self._graphql(queries.JOB, {"id": job_id}), job_id)

    def explain(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Where a spec could run now (with a price quote), and why every other provider can't."""
        result = self._graphql(queries.EXPLAIN, {"spec": spec})["explain"]
        if result["__typename"] == "SpecRejected":
            raise SpecRejectedError([(e["field"], e["message"]) for e in result["errors"]])
        return dict(result)

    def explain_spec_file(self, path: str | Path) -> dict[str, Any]:
        spec = load_spec_file(Path(path))
        try:
            return self.explain(spec.model_dump(mode="json", exclude={"inputs"}))
        except SpecRejectedError as err:
            raise err.with_source(str(path)) from None

    def cancel_job(self, job_id: str) -> Job:
        """Ask the job to stop; it settles what it used and ends CANCELLED."""
        data = self._graphql(queries.CANCEL_JOB, {"id": job_id})
        return Job.from_json(data["cancelJob"])

    def jobs(self, limit: int = 50) -> list[Job]:
        return _http.parse_jobs(self._graphql(queries.JOBS, {"limit": limit}))

    def account(self) -> Account:
        return _http.parse_account(self._graphql(queries.ACCOUNT))

    def providers(self) -> list[Provider]:
        return _http.parse_providers(self._graphql(queries.PROVIDERS))

    # -- providers' own controls and nodes --------------------------------

    def provider(self, provider_id: str, samples: int = 0) -> Provider:
        """One provider, with its GPUs' status and its last `samples` telemetry readings."""
        data = self._graphql(queries.PROVIDER, {"id": provider_id, "samples": samples})
        return _http.parse_provider(data, "provider", provider_id)

    def provider_earnings(self, provider_id: str, limit: int = 100) -> ProviderEarnings:
        data = self._graphql(
            queries.PROVIDER_EARNINGS, {"id": provider_id, "limit": limit}
        )
        return _http.parse_earnings(data)

    def suspend_gpu(self, provider_id: str, index: int) -> Provider:
        """Take a GPU out of service: no new work; a job on it finishes."""
        data = self._graphql(queries.SUSPEND_GPU, {"id": provider_id, "index": index})
        return _http.parse_provider(data, "suspendGpu", provider_id)

    def resume_gpu(self, provider_id: str, index: int) -> Provider:
        data = self._graphql(queries.RESUME_GPU, {"id": provider_id, "index": index})
        return _http.parse_provider(data, "resumeGpu", provider_id)

    def set_price(self, provider_id: str, credits: str | int | float) -> Provider:
        """The provider's price per GPU-hour, in credits ("2.5"), for jobs placed from now."""
        variables = {"id": provider_id, "price": _http.price_text(credits)}
        data = self._graphql(queries.SET_PRICE, variables)
        return _http.parse_provider(data, "setPrice", provider_id)

    def nodes(self) -> list[Node]:
        return _http.parse_nodes(self._graphql(queries.NODES))

    def configure_queue(
        self,
        node_id: str,
        name: str,
        gpu_models: list[str],
        priority_levels: int = 1,
        max_gpus_per_client: int = 0,
        fair_share: bool = True,
    ) -> None:
        """Create or change a queue (every setting: what is left out takes its default)."""
        self._graphql(queries.CONFIGURE_QUEUE, _http.queue_variables(
            node_id, name, gpu_models, priority_levels, max_gpus_per_client, fair_share
        ))

    def queue(self, name: str = "local/default", limit: int = 100) -> list[QueuedJob]:
        """A queue's waiting jobs in the order the scheduler places them."""
        return _http.parse_queue(self._graphql(queries.QUEUE, {"name": name, "limit": limit}))

    def submit_spec_file(self, path: str | Path, progress: FileProgress | None = None) -> Job:
        """Check a spec file, upload its local inputs, submit the job."""
        plan = plan_spec_file(Path(path))
        for item in plan.uploads:
            self.upload(item.local, item.key, bind_progress(progress, item.key))
        try:
            return self.submit_job(plan.spec)
        except SpecRejectedError as err:
            raise err.with_source(str(path)) from None

    def follow(self, job_id: str, after: int = 0) -> Iterator[JobEvent]:
        """Every event of the job with seq > after, in order, until its terminal event.

        A dropped connection is reopened, resuming after the last event seen.
        """
        yield from self._follow(job_id, after, JobEventsSession)

    def follow_log(self, job_id: str, after: int = 0) -> Iterator[JobLogChunk]:
        """The job's output as its runs print it, chunk by chunk after seq `after`, until
        the job has ended (the job's owner only); resumes as `follow` does."""
        yield from self._follow(job_id, after, JobLogSession)

    def _follow(self, job_id: str, after: int, kind: type[JobEventsSession]) -> Iterator[Any]:
        uri = graphql_ws_url(self.api_url)
        last = after
        down_since: float | None = None
        failures = 0
        connected = False
        while True:
            try:
                with ws_connect(
                    uri,
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    additional_headers=auth_headers(self.token),
                    open_timeout=10,
                ) as ws:
                    connected = True
                    session = kind(self.token, job_id, last)
                    ws.send(session.init_message())
                    for raw in ws:
                        step = session.handle(raw)
                        if step.reply is not None:
                            ws.send(step.reply)
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
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > self.reconnect_window_s:
                raise ApiUnreachable(self.api_url, "the event stream dropped and did not come back")
            failures += 1
            time.sleep(backoff_s(failures))

    # -- storage ----------------------------------------------------------

    def upload(
        self, path: str | Path, key: str, progress: ByteProgress | None = None
    ) -> StoredObject:
        """Stream a local file to `key`, with its sha256 (computed first) for the API to check."""
        local = Path(path)
        try:
            sha256, size = file_sha256(local)
        except OSError as err:
            raise GpgpuError(f"{local}: cannot read: {err.strerror or err}") from None

        def chunks() -> Iterator[bytes]:
            done = 0
            with local.open("rb") as f:
                while chunk := f.read(CHUNK):
                    done += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(done, size)

        if progress is not None:
            progress(0, size)
        resp = self._request(
            "PUT",
            storage_url(self.api_url, self._space(), key),
            content=chunks(),
            headers={SHA256_HEADER: sha256, "Content-Length": str(size)},
        )
        return StoredObject.from_json(resp.json())

    def download(
        self,
        key: str,
        dest: str | Path,
        progress: ByteProgress | None = None,
        expected_sha256: str | None = None,
    ) -> StoredObject:
        """Stream `key` to `dest`, verified against X-Sha256 (and expected_sha256 if given).

        Bytes land in a temp file beside dest that is renamed only once verified.
        """
        url = storage_url(self.api_url, self._space(), key)
        try:
            with self._http.stream("GET", url) as resp:
                if resp.status_code >= 400:
                    _http.check_status(resp.status_code, resp.read(), f"object {key!r}")
                promised = resp.headers.get(SHA256_HEADER)
                if not promised:
                    raise ApiError(resp.status_code, f"{key}: the API sent no {SHA256_HEADER}")
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                part = PartFile(Path(dest))
                try:
                    for chunk in resp.iter_bytes(CHUNK):
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

    def list_objects(self, prefix: str = "") -> list[StoredObject]:
        resp = self._request(
            "GET", storage_url(self.api_url, self._space()), params={"prefix": prefix}
        )
        return [StoredObject.from_json(o) for o in resp.json()]

    def delete(self, key: str) -> None:
        self._request("DELETE", storage_url(self.api_url, self._space(), key), f"object {key!r}")
