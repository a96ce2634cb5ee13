"""OpenAI wire types, the error envelope and the small ASGI toolkit shared by node and gateway."""

from edgecloud.api.errors import (
    APIError,
    BadRequest,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    QueueFull,
    Unauthorized,
    error_body,
)

__all__ = [
    "APIError",
    "BadRequest",
    "ModelNotFound",
    "NotReady",
    "PayloadTooLarge",
    "QueueFull",
    "Unauthorized",
    "error_body",
]
