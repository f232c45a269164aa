"""The synchronous SDK: `GpgpuClient`, the calls of client/calls.py over httpx.Client, and a
job's events over a graphql-transport-ws websocket.

with GpgpuClient() as gp:
    job = gp.submit_spec_file("examples/hello/job.yaml")
    for event in gp.follow(job.id):
        print(event.seq, event.type)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from client import _http
from client._http import CHUNK, PartFile
from client.calls import Calls, GetFile, Http, PutFile, Query, Step, Steps
from client.config import (
    DIGEST_HEADER,
    auth_headers,
    graphql_ws_url,
    resolve_api_url,
    resolve_token,
)
from client.errors import ApiError, ApiUnreachable
from client.models import JobEvent, JobLogChunk, StoredObject
from client.subscription import (
    RECONNECT_WINDOW_S,
    SUBPROTOCOL,
    JobEventsSession,
    JobLogSession,
    backoff_s,
    close_error,
)

T = TypeVar("T")


class GpgpuClient(Calls):
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

    # -- the transport: each step of a call, done with httpx.Client -----------

    _http: httpx.Client

    def _serve(self, steps: Callable[..., Steps[T]]) -> Callable[..., T]:
        def run(*args: Any, **kwargs: Any) -> T:
            return self._drive(steps(self, *args, **kwargs))

        return run

    def _drive(self, steps: Steps[T]) -> T:
        answer: Any = None
        error: Exception | None = None
        while True:
            try:
                step = steps.send(answer) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            try:
                answer, error = self._do(step), None
            except Exception as err:  # handed to the call, which may catch it
                answer, error = None, err

    def _do(self, step: Step) -> Any:
        try:
            if isinstance(step, Query):
                resp = self._http.post(f"{self.api_url}/graphql",
                                       json={"query": step.document, "variables": step.variables})
                return _http.graphql_data(resp.status_code, resp.content)
            if isinstance(step, Http):
                resp = self._http.request(step.method, step.url, params=step.params)
                _http.check_status(resp.status_code, resp.content, step.what)
                return resp
            if isinstance(step, PutFile):
                return self._put_file(step)
            if isinstance(step, GetFile):
                return self._get_file(step)
            return step.fn(*step.args)
        except httpx.TransportError as err:
            raise _http.transport_error(self.api_url, err) from None

    def _put_file(self, step: PutFile) -> httpx.Response:
        def chunks() -> Iterator[bytes]:
            done = 0
            with step.local.open("rb") as f:
                while chunk := f.read(CHUNK):
                    done += len(chunk)
                    yield chunk
                    if step.progress is not None:
                        step.progress(done, step.size)

        if step.progress is not None:
            step.progress(0, step.size)
        resp = self._http.put(step.url, content=chunks(), headers={
            DIGEST_HEADER: step.digest, "Content-Length": str(step.size)})
        _http.check_status(resp.status_code, resp.content)
        return resp

    def _get_file(self, step: GetFile) -> StoredObject:
        with self._http.stream("GET", step.url) as resp:
            if resp.status_code >= 400:
                _http.check_status(resp.status_code, resp.read(), f"object {step.key!r}")
            promised = _http.promises(step.key, resp.headers, step.expected_digest)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            part = PartFile(step.dest, promised)
            try:
                for chunk in resp.iter_bytes(CHUNK):
                    part.write(chunk)
                    if step.progress is not None:
                        step.progress(part.size, total)
                got = part.commit(step.key)
            except BaseException:
                part.discard()
                raise
        return StoredObject(key=step.key, size=part.size, digest=got)

    # -- a job's events, over a websocket -------------------------------------

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
