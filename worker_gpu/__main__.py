"""`python -m worker_gpu --provider-id ID [--simulate 2xH100:80] ...`: run a provider agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path

from infra import tracing
from infra.settings import Settings
from protocol.money import price_to_micro
from worker_gpu.config import AgentConfig, add_runtime_arguments, runtime_fields


def _price(text: str) -> int:
    try:
        return price_to_micro(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _provider_id(text: str) -> str:
    # It names a task queue and a scratch folder: keep it to characters safe in both.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use letters, digits, '.', '_' and '-' (at most 128)"
        )
    return text


def parse_args(argv: list[str]) -> AgentConfig:
    parser = argparse.ArgumentParser(
        prog="python -m worker_gpu",
        description="GPGPU provider agent: rent out this machine's GPUs",
    )
    parser.add_argument(
        "--provider-id",
        required=True,
        type=_provider_id,
        help="this provider's id on the network",
    )
    parser.add_argument(
        "--simulate",
        metavar="SPEC",
        help='declare GPUs instead of asking the driver, e.g. "2xH100:80" or "1xA100:40,1xL4:24"',
    )
    parser.add_argument(
        "--price", type=_price, default=_price("2.5"), help="credits per GPU-hour (default 2.5)"
    )
    parser.add_argument("--region", default="local")
    parser.add_argument("--node", default="local", help="the node this provider joins")
    parser.add_argument("--scratch", type=Path, help="job directories (default GPGPU_HOME/scratch)")
    parser.add_argument(
        "--corrupt-outputs",
        action="store_true",
        help="TEST ONLY: act as a dishonest provider that reports wrong output digests",
    )
    parser.add_argument(
        "--wrong-results",
        action="store_true",
        help="TEST ONLY: act as a dishonest provider that uploads altered outputs, "
        "honestly hashed (only comparing runs can catch it)",
    )
    parser.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=10.0,
        help="on SIGTERM, seconds running jobs get to finish before they are killed",
    )
    add_runtime_arguments(parser)
    args = parser.parse_args(argv)
    return AgentConfig(
        provider_id=args.provider_id,
        price_per_gpu_hour_micro=args.price,
        region=args.region,
        simulate=args.simulate,
        scratch=args.scratch,
        corrupt_outputs=args.corrupt_outputs,
        wrong_results=args.wrong_results,
        node=args.node,
        shutdown_grace_s=args.shutdown_grace_s,
        **runtime_fields(args),
    )


def main(argv: list[str] | None = None) -> None:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    from infra.logs import configure_logging  # text, or JSON lines with the job id

    configure_logging(logging.INFO, settings.log_format)
    # httpx logs every request at INFO: a line per heartbeat, and presigned URLs
    # (signatures included) in the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not settings.api_key:
        logging.getLogger("worker_gpu").warning(
            "GPGPU_API_KEY is not set: the API refuses to register a provider without the API "
            "key of its owner's account (create one on the web UI's API keys page, or with "
            "`gpgpu keys create NAME --scope provider`)"
        )
    code = 1
    try:
        # Imported here, not at the top: the runtimes (docker) take a while to import,
        # and a mistyped flag should be answered at once.
        from worker_gpu.agent import serve

        tracing.setup(settings.tracing, "gpu-worker", config.provider_id)

        code = asyncio.run(serve(config, settings))
    except Exception:
        logging.getLogger("worker_gpu").exception("provider agent failed")
    finally:
        tracing.shutdown()  # os._exit skips atexit: export the spans still buffered
        # Leave deliberately: the abandoned long-poll and heartbeat threads never hold
        # up an exit, and a clean stop never reports a crash.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)


if __name__ == "__main__":
    main()
