"""A domain refusal in the API's words: its field under the GraphQL name that carries it.

Expected failures - ones the caller can mend (a name taken, a price out of bounds, a wrong
password) - are typed results, as strawberry's guide on errors has them: a mutation that
can be refused answers `<Payload> | FieldError`, and the resolver is wrapped in
`@refusable`, which turns a `DomainError` (or a `Refusal`, an API-side check's) into a
`FieldError`. What is not the caller's to mend - not signed in, not theirs, a fault -
stays a GraphQL error."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import strawberry

from domain.errors import DomainError

P = ParamSpec("P")
T = TypeVar("T")

# Where the domain's name of a field differs from the GraphQL argument or input field.
GRAPHQL_FIELDS = {
    "provider_id": "providerId",
    "node_id": "nodeId",
    "current_password": "currentPassword",
    "new_password": "newPassword",
}


def graphql_field(err: DomainError) -> str:
    return GRAPHQL_FIELDS.get(err.field, err.field)


def refusal_text(err: DomainError) -> str:
    """"field: why", the field as the API names it (just "why" when it names no field)."""
    field = graphql_field(err)
    return f"{field}: {err.reason}" if field else err.reason


class Refusal(ValueError):
    """A refusal in the API's words: `field` as GraphQL names it. A ValueError, so that a
    resolver that answers no union shows it as a GraphQL error reading "field: why"."""

    def __init__(self, field: str, message: str):
        self.field, self.reason = field, message
        super().__init__(f"{field}: {message}" if field else message)


def refused(err: DomainError) -> Refusal:
    """The domain's refusal under the GraphQL name of its field."""
    return Refusal(graphql_field(err), err.reason)


@strawberry.type(description="A refusal the caller can mend: the argument or input field it "
                 "is about, as the schema names it (empty when it is about no one field), "
                 "and why")
class FieldError:
    field: str
    message: str

    @classmethod
    def of(cls, err: Refusal | DomainError) -> FieldError:
        if isinstance(err, DomainError):
            err = refused(err)
        return cls(field=err.field, message=err.reason)


def refusable(resolver: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T | FieldError]]:
    """The resolver, answering a `FieldError` where it was refused (its result type is a
    union with FieldError); strawberry reads the wrapped signature."""

    @functools.wraps(resolver)
    async def answer(*args: P.args, **kwargs: P.kwargs) -> T | FieldError:
        try:
            return await resolver(*args, **kwargs)
        except (Refusal, DomainError) as err:
            return FieldError.of(err)

    return answer

