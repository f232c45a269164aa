"""Errors the domain raises when a command must be refused."""

from __future__ import annotations


class DomainError(Exception):
    """A command refused by an invariant.

    `field` names what the refusal is about, in the domain's words ("email", "provider_id",
    "inputs.0.key"; "" when it is about no one field), so that an API can show it under its
    own name for that field without reading the text; `reason` is the message, why.
    (Not `.message`: graphql-core would show that alone, without the field.)
    """

    def __init__(self, field: str, message: str):
        self.field, self.reason = field, message
        super().__init__(f"{field}: {message}" if field else message)


class InsufficientFunds(DomainError):
    pass


class InvalidAmount(DomainError):
    pass


class InvalidTransition(DomainError):
    pass


class UnknownJob(DomainError):
    pass


class UnknownProvider(DomainError):
    pass
