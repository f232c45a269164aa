"""`python -m bench NAME [options]`: run one benchmark; its figures go to stdout as JSON lines.

Each bench is a module with `main(argv: list[str]) -> int`, imported only when
it is asked for, so one bench's imports never slow down or break another.
"""

from __future__ import annotations

import importlib
import sys

# name -> module; adding a bench is one line here.
BENCHES = {
    "events": "bench.events",
    "matching": "bench.matching",
    "pipeline": "bench.pipeline",
    "sandbox": "bench.sandbox",
    "staging": "bench.staging",
    "soak": "bench.soak",
    "verification": "bench.verification",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m bench NAME [options]\nbenches: {', '.join(sorted(BENCHES))}"
    if args and args[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not args or args[0] not in BENCHES:
        print(f"unknown bench {args[0]!r}" if args else "no bench named", file=sys.stderr)
        print(usage, file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHES[args[0]])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
