"""`python -m infra.control_worker`: JobWorkflow and the control activities."""

from __future__ import annotations

import asyncio

from infra import tracing
from infra.payload_codec import PayloadKeyError
from infra.process import run_service
from infra.settings import Settings
from infra.temporal import run_control_worker


def main() -> None:
    settings = Settings()
    try:
        settings.payload_keys  # noqa: B018 -- Temporal's payloads are encrypted with it
    except PayloadKeyError as err:
        raise SystemExit(f"error: {err}") from None
    tracing.setup(settings.tracing, "control-worker")

    async def serve(stop: asyncio.Event) -> None:
        await run_control_worker(settings, stop)

    run_service(serve)


if __name__ == "__main__":
    main()
