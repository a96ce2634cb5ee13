"""Errors of the node; the HTTP edge maps the APIError ones onto the OpenAI envelope."""

from __future__ import annotations

from edgecloud.api.errors import APIError, BadRequest
from edgecloud.api.yamlconfig import ConfigError as _ConfigFileError


class ConfigError(_ConfigFileError):
    """The node configuration is unreadable or has an invalid field (file, line and field)."""


class ServerShuttingDown(APIError):
    """The node is draining for shutdown and takes no new requests."""

    status = 503
    type = "service_unavailable"
    code = "shutting_down"


class SwapInProgress(APIError):
    """Another model swap is under way; retry when it has finished."""

    status = 409
    type = "invalid_request_error"
    code = "swap_in_progress"


class ModelLoadFailed(APIError):
    """The model file asked for could not be loaded."""

    status = 400
    type = "invalid_request_error"
    code = "model_load_failed"


class ModelPathNotAllowed(APIError):
    """The admin swap named a file outside the configured model directories."""

    status = 403
    type = "permission_error"
    code = "model_path_not_allowed"


class InvalidImage(BadRequest):
    """An image part that is not a readable PNG, JPEG or WebP data URI."""

    code = "invalid_image"


class ImageLimitExceeded(BadRequest):
    """An image, or a request's images, over the node's limits (bytes, pixels, count)."""

    code = "image_too_large"


class RemoteImageRefused(BadRequest):
    """A remote image URL on a host the node does not fetch from."""

    code = "image_url_not_allowed"


class ImageFetchFailed(InvalidImage):
    """An allowed remote image URL that could not be fetched."""

    code = "image_fetch_failed"


class ModelSwapped(APIError):
    """The model (and its projector) was swapped while the request's images were read."""

    status = 503
    type = "service_unavailable"
    code = "model_swapped"
