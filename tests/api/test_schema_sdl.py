"""The committed SDL (api/schema.graphql) is the schema the code serves, composed of the
features' root fields in the order it lists them."""

from __future__ import annotations

import pytest
import strawberry
from strawberry.types.base import get_object_definition

from api.schema import merged
from api.sdl import SDL_PATH, current_sdl


def test_committed_sdl_matches_the_code() -> None:
    assert SDL_PATH.exists(), "api/schema.graphql is missing: run `python -m api.sdl`"
    committed = SDL_PATH.read_text()
    assert committed == current_sdl(), (
        "the GraphQL schema changed: run `python -m api.sdl` and commit api/schema.graphql"
    )


# The composition (api/schema.py `merged`): the features' root fields, in the listed order


@strawberry.type
class _First:
    @strawberry.field
    def a(self) -> int:
        return 1

    @strawberry.field
    def c(self) -> int:
        return 3


@strawberry.type
class _Second:
    @strawberry.field
    def b(self) -> int:
        return 2


def _field_names(root: type) -> list[str]:
    return [f.python_name for f in get_object_definition(root, strict=True).fields]


def test_the_features_fields_are_composed_in_the_listed_order() -> None:
    root = merged("Root", (_First, _Second), "a b c")
    assert _field_names(root) == ["a", "b", "c"]  # merge_types alone gives a c b
    printed = strawberry.Schema(query=root).as_str()
    assert printed.index("a: Int!") < printed.index("b: Int!") < printed.index("c: Int!")
    assert _field_names(_First) == ["a", "c"]  # the features' own types are left as they are


def test_a_field_left_out_of_the_order_is_named() -> None:
    with pytest.raises(RuntimeError, match=r"Root: c missing from the order"):
        merged("Root", (_First, _Second), "a b")
    with pytest.raises(RuntimeError, match=r"Root: d missing from the order or from the features"):
        merged("Root", (_First, _Second), "a b c d")


def test_a_field_two_features_define_is_named() -> None:
    with pytest.raises(RuntimeError, match=r"Root: a, c defined or ordered twice"):
        merged("Root", (_First, _First, _Second), "a b c")
    with pytest.raises(RuntimeError, match=r"Root: b defined or ordered twice"):
        merged("Root", (_First, _Second), "a b c b")
