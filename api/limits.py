"""What one GraphQL request may ask for: depth, size and aliases, refused before it runs.

The schema has no cycles, so the deepest query our own clients send (client/queries.py,
web/src/queries.ts) is 4 levels; GraphiQL's introspection query is about 250 tokens and
has no aliases. The limits leave room above that and stop the cheap attacks on a
GraphQL server: a document of a million tokens (parsing alone costs CPU), a thousand
aliases of one expensive field (each resolved in full), selections nested past any real
use. A refused request gets a GraphQL error that says which limit and what it is
("'Q' exceeds maximum operation depth of 10", "2000 aliases found. Allowed: 20").
Introspection fields (`__schema`, `__type`) do not count towards depth (strawberry's
default); the token limit bounds them.

`schema = strawberry.Schema(..., extensions=LIMIT_EXTENSIONS)` applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

MAX_DEPTH = 10
MAX_TOKENS = 2_000
MAX_ALIASES = 20

# Factories, not instances: strawberry makes a fresh extension for each request.
LIMIT_EXTENSIONS: list[Callable[[], SchemaExtension]] = [
    partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
    partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
    partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
]
