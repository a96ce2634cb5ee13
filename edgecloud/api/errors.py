"""The OpenAI error envelope and the exception tree that maps onto it.

Every HTTP edge (node, gateway, fleet server) raises these and turns them into
`{"error": {"message", "type", "param", "code"}}` in exactly one place.
"""

from __future__ import annotations

import orjson


class APIError(Exception):
    """An error that becomes an OpenAI-style error response.

    Subclasses set their status, type and code in the class line:
    `class QueueFull(APIError, status=429, type="rate_limit_error", code="queue_full")`."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init_subclass__(
        cls, *, status: int | None = None, type: str | None = None, code: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if type is not None:
            cls.type = type
        if code is not None:
            cls.code = code

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


_INVALID = "invalid_request_error"
_UNAVAILABLE = "service_unavailable"


class BadRequest(APIError, status=400, type=_INVALID):
    """The request is malformed or asks for something unsupported."""


class Unauthorized(APIError, status=401, type="authentication_error", code="invalid_api_key"):
    """No valid credential."""


class ModelNotFound(APIError, status=404, type=_INVALID, code="model_not_found"):
    """The requested model is not served here."""


class NotFound(APIError, status=404, type=_INVALID, code="not_found"):
    """No such route or object."""


class MethodNotAllowed(APIError, status=405, type=_INVALID, code="method_not_allowed"):
    """The route exists but not for this method."""


class RequestTimeout(APIError, status=408, type=_INVALID, code="request_timeout"):
    """The client did not send its request (headers or body) within the read deadline."""


class PayloadTooLarge(APIError, status=413, type=_INVALID, code="request_too_large"):
    """The body is over the server's limit."""


class HeadersTooLarge(APIError, status=431, type=_INVALID,
                      code="request_header_fields_too_large"):
    """The request line and headers are over the server's limit."""


class UnsupportedMediaType(APIError, status=415, type=_INVALID, code="unsupported_media_type"):
    """The body is not JSON."""


class QueueFull(APIError, status=429, type="rate_limit_error", code="queue_full"):
    """Every slot and queue place is taken; retry after a moment."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after_s)})


class NotReady(APIError, status=503, type=_UNAVAILABLE, code="not_ready"):
    """The server is up but cannot answer yet (no model loaded)."""


class ShuttingDown(APIError, status=503, type=_UNAVAILABLE, code="shutting_down"):
    """The server is draining and takes no new work."""


class TooManyConnections(APIError, status=503, type=_UNAVAILABLE, code="too_many_connections"):
    """The server is at its connection limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "1"})


def error_body(
    message: str, type_: str = "server_error", param: str | None = None, code: str | None = None
) -> bytes:
    """Serialise one OpenAI error envelope."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def one_of(value: object, names: frozenset[str]) -> bool:
    """Whether a request's field (a role, a part's type) is one of `names`. Only a string is
    looked up: a list or an object there cannot be hashed, and a set lookup of it would raise
    TypeError (a 500) rather than say the field is wrong."""
    return type(value) is str and value in names
