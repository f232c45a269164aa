"""Every SDK call, written once; `GpgpuClient` (sdk.py) and `AsyncGpgpuClient` (aio.py) serve it.

A call is a generator of steps (sans-IO): it yields what it needs done - a GraphQL
`Query`, an `Http` request, a file streamed up (`PutFile`) or down (`GetFile`), or
`Blocking` local work (reading a spec file, hashing an input) - and is sent back each
answer; what it returns is the call's result. The sync client drives these steps with
httpx.Client, the async one with httpx.AsyncClient (blocking work in a thread), so the
two offer the same methods with the same parameters, documents and parsing, and cannot
drift apart: a method added to `Calls` is a method of both.

Only what is inherently one or the other is written twice: following a job's events
(a websocket held open), and opening and closing the client.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import httpx

from client import _http, queries
from client._http import ByteProgress, FileProgress, bind_progress, file_digest
from client.config import auth_headers, storage_url
from client.errors import GpgpuError, SpecRejectedError
from client.models import (
    Account,
    ApiKey,
    Job,
    Node,
    Provider,
    ProviderEarnings,
    QueuedJob,
    StoredObject,
    User,
)
from client.specfile import load_spec_file, plan_spec_file

if TYPE_CHECKING:
    from client.aio import AsyncGpgpuClient
    from client.sdk import GpgpuClient

P = ParamSpec("P")
T = TypeVar("T")


# -- the steps a call yields, and what it is sent back ------------------------


@dataclass(frozen=True)
class Query:
    """A GraphQL document and its variables; answered with the answer's `data`."""

    document: str
    variables: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Http:
    """A plain request, its body read; answered with the response (an error status raises)."""

    method: str
    url: str
    what: str = ""  # names the thing a 404 is about
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class PutFile:
    """Stream a local file of known digest and size to `url`; answered with the response."""

    url: str
    local: Path
    digest: str
    size: int
    progress: ByteProgress | None


@dataclass(frozen=True)
class GetFile:
    """Stream `url` into `dest`, verified against the API's X-Digest and `expected_digest`;
    answered with the StoredObject written."""

    url: str
    key: str
    dest: Path
    progress: ByteProgress | None
    expected_digest: str | None


@dataclass(frozen=True)
class Blocking:
    """Local work that may block (files): run as is, or in a thread by the async client."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


Step = Query | Http | PutFile | GetFile | Blocking
Steps = Generator[Step, Any, T]


class call(Generic[P, T]):  # lower case: used as a decorator, like `property`
    """One entry of the table: a method of both clients, served by each one's transport."""

    def __init__(self, steps: Callable[Concatenate[Any, P], Steps[T]]):
        self.steps = steps
        functools.update_wrapper(self, steps)
        signature = inspect.signature(steps)
        returns = signature.return_annotation  # "Steps[Job]": the caller gets a Job
        if isinstance(returns, str) and returns.startswith("Steps[") and returns.endswith("]"):
            signature = signature.replace(return_annotation=returns[len("Steps["):-1])
        self.__signature__ = signature  # as help() shows it on the class
        self.signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    def __call__(self, client: Any, *args: Any, **kwargs: Any) -> Any:
        """Called on the class with the client first, as a method can be."""
        return self.__get__(client, type(client))(*args, **kwargs)

    @overload
    def __get__(self, obj: None, owner: type) -> call[P, T]: ...
    @overload
    def __get__(self, obj: GpgpuClient, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, obj: AsyncGpgpuClient, owner: type
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        bound = obj._serve(self.steps)
        functools.update_wrapper(bound, self.steps)
        bound.__signature__ = self.signature
        return bound


class Calls:
    """The table of calls and the state both clients share (API URL, token, storage space)."""

    api_url: str
    token: str | None
    client_id: str | None
    _http: httpx.Client | httpx.AsyncClient

    def _use(self, token: str) -> None:
        self.token = token
        self._http.headers.update(auth_headers(token))

    def _space(self) -> Steps[str]:
        """The storage space calls act on: the one given, else the caller's own client id."""
        if self.client_id is None:
            self.client_id = _http.own_space((yield Query(queries.ME)))
        return self.client_id

    def _session(self, data: dict[str, Any], key: str) -> tuple[str, User]:
        token, user = _http.parse_session(data, key)
        self._use(token)
        return token, user

    # -- accounts ---------------------------------------------------------

    @call
    def me(self) -> Steps[User | None]:
        found = (yield Query(queries.ME)).get("me")
        return None if found is None else User.from_json(found)

    @call
    def sign_up(self, email: str, password: str, roles: list[str]) -> Steps[tuple[str, User]]:
        """A new account; its session token is used from now on (and returned)."""
        variables = {"email": email, "password": password, "roles": roles}
        return self._session((yield Query(queries.SIGN_UP, variables)), "signUp")

    @call
    def sign_in(self, email: str, password: str) -> Steps[tuple[str, User]]:
        """A session for this account; its token is used from now on (and returned)."""
        variables = {"email": email, "password": password}
        return self._session((yield Query(queries.SIGN_IN, variables)), "signIn")

    @call
    def sign_out(self) -> Steps[bool]:
        return bool((yield Query(queries.SIGN_OUT))["signOut"])

    @call
    def change_password(self, current: str, new: str) -> Steps[tuple[str, User]]:
        """A new password: the account's other sessions end; this client uses the new one."""
        variables = {"current": current, "new": new}
        return self._session((yield Query(queries.CHANGE_PASSWORD, variables)), "changePassword")

    @call
    def reset_password(self, email: str) -> Steps[str]:
        """Admin: a temporary password for someone locked out (every session of theirs ends)."""
        data = yield Query(queries.RESET_PASSWORD, {"email": email})
        return str(_http.result(data, "resetPassword")["temporaryPassword"])

    @call
    def add_roles(self, roles: list[str]) -> Steps[User]:
        """Take on more roles (client, provider, operator); the account as it is now."""
        data = yield Query(queries.ADD_ROLES, {"roles": roles})
        return User.from_json(_http.result(data, "addRoles"))

    @call
    def revoke_role(self, email: str, role: str) -> Steps[User]:
        """Admin: take a role from an account (it keeps one at least)."""
        data = yield Query(queries.REVOKE_ROLE, {"email": email, "role": role})
        return User.from_json(_http.result(data, "revokeRole"))

    @call
    def create_api_key(self, name: str, scopes: list[str]) -> Steps[ApiKey]:
        """A new key (its `key` is in this answer only)."""
        data = yield Query(queries.CREATE_API_KEY, {"name": name, "scopes": scopes})
        return ApiKey.from_json(_http.result(data, "createApiKey"))

    @call
    def api_keys(self) -> Steps[list[ApiKey]]:
        return [ApiKey.from_json(k) for k in (yield Query(queries.API_KEYS))["apiKeys"]]

    @call
    def revoke_api_key(self, key_id: str) -> Steps[bool]:
        data = yield Query(queries.REVOKE_API_KEY, {"id": key_id})
        return bool(_http.result(data, "revokeApiKey")["id"])

    # -- jobs -------------------------------------------------------------

    def _submit_job(self, spec: dict[str, Any]) -> Steps[Job]:
        return _http.parse_submit((yield Query(queries.SUBMIT_JOB, {"spec": spec})))

    @call
    def submit_job(self, spec: dict[str, Any]) -> Steps[Job]:
        return (yield from self._submit_job(spec))

    @call
    def submit_spec_file(
        self, path: str | Path, progress: FileProgress | None = None
    ) -> Steps[Job]:
        """Check a spec file, upload its local inputs, submit the job."""
        plan = yield Blocking(plan_spec_file, (Path(path),))
        for item in plan.uploads:
            yield from self._upload(item.local, item.key, bind_progress(progress, item.key))
        try:
            return (yield from self._submit_job(plan.spec))
        except SpecRejectedError as err:
            raise err.with_source(str(path)) from None

    @call
    def job(self, job_id: str) -> Steps[Job]:
        return _http.parse_job((yield Query(queries.JOB, {"id": job_id})), job_id)

    def _explain(self, spec: dict[str, Any]) -> Steps[dict[str, Any]]:
        result = (yield Query(queries.EXPLAIN, {"spec": spec}))["explain"]
        if result["__typename"] == "SpecRejected":
            raise SpecRejectedError([(e["field"], e["message"]) for e in result["errors"]])
        return dict(result)

    @call
    def explain(self, spec: dict[str, Any]) -> Steps[dict[str, Any]]:
        """Where a spec could run now (with a price quote), and why every other provider can't."""
        return (yield from self._explain(spec))

    @call
    def explain_spec_file(self, path: str | Path) -> Steps[dict[str, Any]]:
        """`explain` for a spec file (its local inputs are not read, nor uploaded)."""
        spec = yield Blocking(load_spec_file, (Path(path),))
        try:
            return (yield from self._explain(spec.model_dump(mode="json", exclude={"inputs"})))
        except SpecRejectedError as err:
            raise err.with_source(str(path)) from None

    @call
    def cancel_job(self, job_id: str) -> Steps[Job]:
        """Ask the job to stop; it settles what it used and ends CANCELLED. A job that
        already ended is refused (RefusedError on `id`)."""
        data = yield Query(queries.CANCEL_JOB, {"id": job_id})
        return Job.from_json(_http.result(data, "cancelJob"))

    @call
    def jobs(self, limit: int = 50) -> Steps[list[Job]]:
        return _http.parse_jobs((yield Query(queries.JOBS, {"limit": limit})))

    @call
    def account(self) -> Steps[Account]:
        return _http.parse_account((yield Query(queries.ACCOUNT)))

    @call
    def providers(self) -> Steps[list[Provider]]:
        return _http.parse_providers((yield Query(queries.PROVIDERS)))

    # -- providers' own controls and nodes --------------------------------

    @call
    def provider(self, provider_id: str, samples: int = 0) -> Steps[Provider]:
        """One provider, with its GPUs' status and its last `samples` telemetry readings."""
        data = yield Query(queries.PROVIDER, {"id": provider_id, "samples": samples})
        return _http.parse_provider(data, "provider", provider_id)

    @call
    def provider_earnings(self, provider_id: str, limit: int = 100) -> Steps[ProviderEarnings]:
        data = yield Query(queries.PROVIDER_EARNINGS, {"id": provider_id, "limit": limit})
        return _http.parse_earnings(data)

    @call
    def suspend_gpu(self, provider_id: str, index: int) -> Steps[Provider]:
        """Take a GPU out of service: no new work; a job on it finishes."""
        data = yield Query(queries.SUSPEND_GPU, {"id": provider_id, "index": index})
        return _http.parse_provider(data, "suspendGpu", provider_id)

    @call
    def resume_gpu(self, provider_id: str, index: int) -> Steps[Provider]:
        data = yield Query(queries.RESUME_GPU, {"id": provider_id, "index": index})
        return _http.parse_provider(data, "resumeGpu", provider_id)

    @call
    def set_price(self, provider_id: str, credits: str | int | float) -> Steps[Provider]:
        """The provider's price per GPU-hour, in credits ("2.5"), for jobs placed from now."""
        variables = {"id": provider_id, "price": _http.price_text(credits)}
        return _http.parse_provider((yield Query(queries.SET_PRICE, variables)), "setPrice",
                                    provider_id)

    @call
    def nodes(self) -> Steps[list[Node]]:
        return _http.parse_nodes((yield Query(queries.NODES)))

    @call
    def configure_queue(
        self,
        node_id: str,
        name: str,
        gpu_models: list[str],
        priority_levels: int = 1,
        max_gpus_per_client: int = 0,
        fair_share: bool = True,
    ) -> Steps[None]:
        """Create or change a queue (every setting: what is left out takes its default)."""
        data = yield Query(queries.CONFIGURE_QUEUE, _http.queue_variables(
            node_id, name, gpu_models, priority_levels, max_gpus_per_client, fair_share
        ))
        _http.result(data, "configureQueue")

    @call
    def queue(self, name: str = "local/default", limit: int = 100) -> Steps[list[QueuedJob]]:
        """A queue's waiting jobs in the order the scheduler places them."""
        return _http.parse_queue((yield Query(queries.QUEUE, {"name": name, "limit": limit})))

    # -- storage ----------------------------------------------------------

    def _upload(
        self, path: str | Path, key: str, progress: ByteProgress | None
    ) -> Steps[StoredObject]:
        local = Path(path)
        try:
            digest, size = yield Blocking(file_digest, (local,))
        except OSError as err:
            raise GpgpuError(f"{local}: cannot read: {err.strerror or err}") from None
        url = storage_url(self.api_url, (yield from self._space()), key)
        resp = yield PutFile(url, local, digest, size, progress)
        return StoredObject.from_json(resp.json())

    @call
    def upload(
        self, path: str | Path, key: str, progress: ByteProgress | None = None
    ) -> Steps[StoredObject]:
        """Stream a local file to `key`, with its digest (computed first) for the API to check."""
        return (yield from self._upload(path, key, progress))

    @call
    def download(
        self,
        key: str,
        dest: str | Path,
        progress: ByteProgress | None = None,
        expected_digest: str | None = None,
    ) -> Steps[StoredObject]:
        """Stream `key` to `dest`, verified against X-Digest (and expected_digest if given:
        "blake3:<hex>", or a sha256, "sha256:<hex>" or bare).

        Bytes land in a temp file beside dest that is renamed only once verified.
        """
        url = storage_url(self.api_url, (yield from self._space()), key)
        return (yield GetFile(url, key, Path(dest), progress, expected_digest))

    @call
    def list_objects(self, prefix: str = "") -> Steps[list[StoredObject]]:
        url = storage_url(self.api_url, (yield from self._space()))
        resp = yield Http("GET", url, params={"prefix": prefix})
        return [StoredObject.from_json(o) for o in resp.json()]

    @call
    def delete(self, key: str) -> Steps[None]:
        url = storage_url(self.api_url, (yield from self._space()), key)
        yield Http("DELETE", url, f"object {key!r}")

