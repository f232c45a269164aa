"""How a provider agent was asked to run (command line); the rest comes from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AgentConfig:
    provider_id: str
    price_per_gpu_hour_micro: int
    region: str = "local"
    simulate: str | None = None
    scratch: Path | None = None
    corrupt_outputs: bool = False
    # How long running activities get to finish after SIGTERM before they are
    # cancelled, which kills their jobs; the workflow then reallocates the work.
    shutdown_grace_s: float = 10.0
