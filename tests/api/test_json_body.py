"""JSON bodies: nesting measured without recursion, refused past the limit with it named."""

from __future__ import annotations

import json

import pytest

from api.json_body import MAX_JSON_DEPTH, BodyNotJson, loads


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_body_at_the_limit_is_read() -> None:
    body = '{"v": ' + nested(MAX_JSON_DEPTH - 1) + "}"
    assert loads(body.encode()) == json.loads(body)


def test_a_body_past_the_limit_is_refused_where_it_passes_it() -> None:
    """100,000 `[` made json.loads raise RecursionError: a 500 from the API."""
    body = '{"v": ' + nested(100_000) + "}"
    with pytest.raises(BodyNotJson) as info:
        loads(body.encode())
    assert str(info.value) == (
        f"the body is nested too deeply: JSON arrays and objects may nest at most "
        f"{MAX_JSON_DEPTH} levels: line 1 column {6 + MAX_JSON_DEPTH} "
        f"(char {5 + MAX_JSON_DEPTH})")
    assert isinstance(info.value, json.JSONDecodeError)  # strawberry's websocket: bad JSON


def test_brackets_inside_strings_are_text() -> None:
    body = json.dumps({"s": "[" * 1000 + '\\"{' * 500, "t": ["]" * 10]})
    assert loads(body) == json.loads(body)


def test_a_body_that_is_not_utf8_is_refused_by_position() -> None:
    with pytest.raises(BodyNotJson, match=r"not utf-8 text .*\(char 7\)"):
        loads(b'{"v": "\xff"}')


def test_a_lone_surrogate_escape_is_read_as_json_reads_it() -> None:
    """Whether such text is acceptable is for the field that holds it (protocol/spec.py)."""
    assert loads(b'["\\ud800"]') == ["\ud800"]
