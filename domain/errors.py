"""Errors the domain raises when a command must be refused."""


class DomainError(Exception):
    """A command refused by an invariant; the message says which and why."""


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
