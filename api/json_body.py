"""JSON request bodies, refused past a nesting depth instead of failing with a 500.

json.loads recurses once per array or object, so a body of 100,000 `[` exhausts
Python's stack: a RecursionError, which neither strawberry (it catches only
JSONDecodeError) nor Starlette answers with anything but 500. `loads` first
measures the nesting without recursion and refuses a body deeper than
MAX_JSON_DEPTH, naming the limit and where it was passed. Every JSON body the API
reads goes through it: GraphQL over HTTP and websockets (api/app.py), and the REST
heartbeat.

A job spec is 4 levels deep inside a GraphQL body; 256 leaves room for any value
a client means, and keeps json.loads, graphql-core and pydantic far from the stack's
end.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 256

# A string (skipped whole, brackets inside it are text) or a bracket.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class BodyNotJson(json.JSONDecodeError):
    """Not JSON we read: too deeply nested, or not text. A JSONDecodeError, so that
    strawberry refuses it as it refuses any bad JSON (websocket close 4400)."""


def _too_deep_at(text: str) -> int | None:
    """Where an array or object opens past MAX_JSON_DEPTH, if one does."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return None
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return match.start()
        elif token in ("]", "}"):
            depth -= 1
    return None


def loads(data: str | bytes) -> Any:
    """json.loads, refusing a document nested deeper than MAX_JSON_DEPTH (BodyNotJson)."""
    if isinstance(data, bytes):
        encoding = json.detect_encoding(data)
        try:
            text = data.decode(encoding, "surrogatepass")  # as json.loads decodes bytes
        except UnicodeDecodeError as err:
            char = len(data[: err.start].decode(encoding, "surrogatepass"))
            raise BodyNotJson(f"the body is not {encoding} text ({err.reason})",
                              data.decode(encoding, "replace"), char) from None
    else:
        text = data
    if (at := _too_deep_at(text)) is not None:
        raise BodyNotJson(f"the body is nested too deeply: JSON arrays and objects may nest "
                          f"at most {MAX_JSON_DEPTH} levels", text, at)
    return json.loads(text)
