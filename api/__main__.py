"""`python -m api`: the API server on GPGPU_API_HOST:GPGPU_API_PORT."""

from __future__ import annotations

import asyncio

import uvicorn

from api.app import create_app
from infra import tracing
from infra.process import run_service
from infra.settings import Settings

# On SIGTERM, requests in flight get this long to finish. An agent's long poll for its
# assignments (up to 25 s) is cut short then: it asks again, of an API that is up.
GRACEFUL_SHUTDOWN_S = 3

def main() -> None:
    settings = Settings()
    settings.check_keys()
    tracing.setup(settings.tracing, "api")

    async def serve(stop: asyncio.Event) -> None:
        config = uvicorn.Config(
            create_app(settings), host=settings.api_host, port=settings.api_port,
            log_level="warning", ws="websockets-sansio", lifespan="on",
            log_config=None,  # uvicorn's lines go through ours: GPGPU_LOG_FORMAT=json too
            ws_per_message_deflate=False,  # ~200-byte events: compression only costs CPU
            ws_max_size=settings.max_request_bytes,  # a websocket message, as a request body
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await task
        if server.started is False:
            where = f"{settings.api_host}:{settings.api_port}"
            raise RuntimeError(f"the API could not start on {where}")

    run_service(serve)


if __name__ == "__main__":
    main()
