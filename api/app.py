"""The API process: GraphQL (with GraphiQL and subscriptions), storage, health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cross_web import HTTPException as GraphQLHTTPException
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from api import assignments, auth, dispatch, downloads, json_body, metrics, storage
from api.body_limit import BodyLimit
from api.context import Context
from api.errors import refusal_text
from api.multiplex import MultiplexedTransportWS
from api.schema import schema
from api.services import Services
from api.socket_limit import SocketLimit
from domain.errors import UnknownProvider
from infra.settings import Settings
from infra.temporal import connect

WEB = Path(__file__).resolve().parent.parent / "web"
UNTRACED = frozenset({"/healthz", "/metrics"})  # polled every few seconds: noise in a trace
TELEMETRY: TelemetryConfig = {
    "exclude": lambda scope: scope.get("path") in UNTRACED,
    "operation_spans": False,  # no spans for FastAPI's dependencies, endpoint, serialization
    "auto_configure": False,  # exporters are GPGPU_TRACING's business (infra/tracing.py)
}


class WebUI(StaticFiles):
    """The built web UI (web/dist). A path it does not hold is one of the UI's own
    routes (/client/jobs/ID): answer index.html and let the UI route it."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except StarletteHTTPException as err:
            if err.status_code != 404 or "." in path.rsplit("/", 1)[-1]:
                raise
            return await super().get_response("index.html", scope)

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        """Hashed assets (/assets/index-3f2a.js: a new build gives a new name) are kept a
        year; index.html and the rest are checked again on each load."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        hashed = Path(full_path).parent.name == "assets"
        response.headers["Cache-Control"] = (
            "public, max-age=31536000, immutable" if hashed else "no-cache")
        return response


class AuthorizedRouter(GraphQLRouter[Context, None]):
    # Subscriptions' events are sent by api/multiplex.py's hub: once executed per group.
    graphql_transport_ws_handler_class = MultiplexedTransportWS

    def decode_json(self, data: str | bytes) -> object:
        """Websocket messages: too deep a message closes the socket as bad JSON (4400)."""
        return json_body.loads(data)

    def parse_json(self, data: str | bytes) -> Any:
        """Request bodies (and GET's variables): a 400 that says what is wrong, never a 500."""
        try:
            return json_body.loads(data)
        except json_body.BodyNotJson as err:
            raise GraphQLHTTPException(400, str(err)) from err
        except json.JSONDecodeError as err:
            raise GraphQLHTTPException(400, f"Unable to parse request body as JSON: {err}") from err

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """connection_init {"Authorization": "Bearer <token>"}: a token that names no one
        closes the socket (4403); without one the connection stays anonymous."""
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        header = params.get("Authorization", params.get("authorization"))
        if header is None:
            return UNSET
        token = auth.bearer(str(header))
        caller = await context.services.auth.authenticate(token)
        if caller is None:
            raise ConnectionRejectionError({"message": "the token is not valid"})
        context.caller, context.token = caller, token
        return UNSET


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        temporal = await connect(settings)
        services = await Services.start(settings, temporal)
        app.state.services = services
        app.state.dispatch = dispatch.of_services(services)
        stop = asyncio.Event()
        listening = asyncio.create_task(app.state.dispatch.listen(stop))
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listening, 5)
            services.stop()

    # FastAPI's own OpenTelemetry server span per request (`POST /graphql`), parent of the
    # StartWorkflow span; it records only once GPGPU_TRACING installed a tracer provider.
    app = FastAPI(title="GPGPU", lifespan=lifespan, telemetry=TELEMETRY)
    app.add_middleware(BodyLimit, max_request_bytes=settings.max_request_bytes,
                       max_object_bytes=settings.max_object_bytes)
    app.add_middleware(SocketLimit, max_websockets=settings.max_websockets_per_process,
                       max_per_address=settings.max_websockets_per_address)

    async def get_context(connection: HTTPConnection) -> Context:
        """The caller named by `Authorization: Bearer`; a websocket may name it (again) in
        its connection_init payload (`AuthorizedRouter.on_ws_connect`)."""
        services: Services = connection.app.state.services
        token = auth.bearer(connection.headers.get("authorization"))
        return Context(services, await services.auth.authenticate(token), token)

    graphql = AuthorizedRouter(
        schema,
        context_getter=get_context,
        graphql_ide="graphiql",
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
    )
    app.include_router(graphql, prefix="/graphql")
    app.include_router(storage.router)
    app.include_router(metrics.router)
    app.include_router(assignments.router)
    app.include_router(downloads.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, object]:
        services: Services = request.app.state.services
        position = await asyncio.to_thread(services.projector.position)
        return {"status": "ok", "projection_position": position}

    @app.post("/providers/{provider_id}/heartbeat")
    async def provider_heartbeat(provider_id: str, request: Request) -> dict[str, bool]:
        """The GraphQL providerHeartbeat without GraphQL's per-request cost: the body is the
        telemetry list (or {"telemetry": [...]}); 400 names the field, 404 an unknown provider,
        401 without a valid token, 403 for a provider that is not the caller's."""
        services: Services = request.app.state.services
        caller = await services.auth.authenticate(
            auth.bearer(request.headers.get("authorization"))
        )
        if caller is None:
            raise HTTPException(401, "unauthenticated: send Authorization: Bearer <API key>",
                                headers={"WWW-Authenticate": "Bearer"})
        if not auth.can_manage_provider(caller, provider_id):  # registered a moment ago?
            caller = await services.auth.authenticate(
                auth.bearer(request.headers.get("authorization")), fresh=True
            )
            if not auth.can_manage_provider(caller, provider_id):
                raise HTTPException(403,
                                    f"forbidden: provider {provider_id!r} is not one of yours")
        try:
            body = json_body.loads(raw) if (raw := await request.body()) else None
        except json_body.BodyNotJson as err:
            raise HTTPException(400, str(err)) from None
        except ValueError:
            raise HTTPException(400, "the body is not JSON") from None
        telemetry = body.get("telemetry") if isinstance(body, dict) else body
        try:
            await services.heartbeat(provider_id, telemetry)
        except UnknownProvider as err:
            raise HTTPException(404, refusal_text(err)) from None
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        return {"ok": True}

    if (WEB / "dist" / "index.html").is_file():  # `make web` built it; mounted last
        # Compressed (gzip) when the browser asks: the scripts shrink to about a third.
        app.mount("/", GZipMiddleware(WebUI(directory=WEB / "dist", html=True), minimum_size=512),
                  name="web")
    else:  # no build (no npm): a page saying where the API is
        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(WEB / "fallback" / "index.html")

    return app
