"""The errors the SDK raises: each one reads as a sentence a person can act on."""

from __future__ import annotations


class GpgpuError(Exception):
    """Base of every error the SDK raises on purpose."""


class BadInput(GpgpuError):
    """The caller's own input is wrong (a spec, a local file); fix it and retry."""


class ApiUnreachable(GpgpuError):
    def __init__(self, api_url: str, cause: str = ""):
        self.api_url = api_url
        self.cause = cause
        super().__init__(f"cannot reach the GPGPU API at {api_url}: is `make up` running?")


class ApiError(GpgpuError):
    """The API answered with an error: an HTTP status (0 when there was none) and its detail."""

    def __init__(self, status: int, detail: str, message: str | None = None):
        self.status = status
        self.detail = detail
        if message is None:
            message = f"API error {status}: {detail}" if status else detail
        super().__init__(message)


class RefusedError(ApiError):
    """The API refused the request for a reason the caller can mend (a `FieldError`
    result): `field` names the argument it is about, as the schema does."""

    def __init__(self, field: str, message: str):
        self.field, self.reason = field, message
        text = f"{field}: {message}" if field else message
        super().__init__(200, text, text)


class NotFoundError(ApiError):
    def __init__(self, what: str):
        super().__init__(404, f"{what} not found", f"{what} not found")


class IntegrityError(GpgpuError):
    """Downloaded bytes do not match the digest the API promised."""


class SpecRejectedError(BadInput):
    """A job spec refused, locally or by the API: (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        text = "; ".join(f"{field}: {message}" for field, message in self.errors)
        super().__init__(f"{source}: {text}" if source else text)

    def with_source(self, source: str) -> SpecRejectedError:
        return SpecRejectedError(self.errors, source)
