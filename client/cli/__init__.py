"""The `gpgpu` command line for users: jobs, storage, account, providers, nodes; over HTTP only.

Each command returns what it shows and one renderer prints it, as JSON with --json
(client/cli/common.py). The operator's commands (`gpgpu up`, `gpgpu admin ...`,
`gpgpu provider start`) are mounted on the same app by ops/cli.py, the console script.
"""

from client.cli import account, jobs, market, storage
from client.cli.common import app

__all__ = ["account", "app", "jobs", "main", "market", "storage"]


def main() -> None:
    """The user commands alone (`python -m client`); `gpgpu` adds the operator's (ops/cli.py)."""
    app(prog_name="gpgpu")
