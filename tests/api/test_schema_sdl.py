"""The committed SDL (api/schema.graphql) is the schema the code serves."""

from __future__ import annotations

from api.sdl import SDL_PATH, current_sdl


def test_committed_sdl_matches_the_code() -> None:
    assert SDL_PATH.exists(), "api/schema.graphql is missing: run `python -m api.sdl`"
    committed = SDL_PATH.read_text()
    assert committed == current_sdl(), (
        "the GraphQL schema changed: run `python -m api.sdl` and commit api/schema.graphql"
    )
