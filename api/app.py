"""The API process: GraphQL (with GraphiQL and subscriptions), storage, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse
from starlette.requests import HTTPConnection
from strawberry.fastapi import GraphQLRouter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from api import storage
from api.schema import schema
from api.services import Services
from api.types import Context
from infra.settings import Settings
from infra.temporal import connect

WEB = Path(__file__).resolve().parent.parent / "web"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        temporal = await connect(settings)
        services = await Services.start(settings, temporal)
        app.state.services = services
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(title="GPGPU", lifespan=lifespan)

    async def get_context(connection: HTTPConnection) -> Context:
        return Context(connection.app.state.services)

    graphql = GraphQLRouter(
        schema,
        context_getter=get_context,
        graphql_ide="graphiql",
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
    )
    app.include_router(graphql, prefix="/graphql")
    app.include_router(storage.router)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, object]:
        services: Services = request.app.state.services
        position = await asyncio.to_thread(services.projector.position)
        return {"status": "ok", "projection_position": position}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB / "index.html")

    return app
