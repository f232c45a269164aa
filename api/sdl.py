"""`python -m api.sdl`: write the GraphQL schema as SDL to api/schema.graphql.

The file is committed so that clients (the web UI, other languages' SDKs) can be
generated and reviewed without running the API; tests/api/test_schema_sdl.py fails
when the code and the file disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

SDL_PATH = Path(__file__).with_name("schema.graphql")


def current_sdl() -> str:
    from api.schema import schema

    return schema.as_str().rstrip("\n") + "\n"


def main() -> int:
    SDL_PATH.write_text(current_sdl())
    print(f"wrote {SDL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
