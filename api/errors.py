"""A domain refusal in the API's words: its field under the GraphQL name that carries it."""

from __future__ import annotations

from domain.errors import DomainError

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


def refused(err: DomainError) -> ValueError:
    """The refusal as a GraphQL error (strawberry shows a ValueError's text)."""
    return ValueError(refusal_text(err))
