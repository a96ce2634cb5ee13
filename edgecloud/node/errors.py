"""Errors of the node; the HTTP edge maps the APIError ones onto the OpenAI envelope."""

from __future__ import annotations

from edgecloud.api.errors import APIError, BadRequest
from edgecloud.api.yamlconfig import ConfigError as _ConfigFileError


class ConfigError(_ConfigFileError):
    """The node configuration is unreadable or has an invalid field (file, line and field)."""


class ServerShuttingDown(APIError, status=503, type="service_unavailable", code="shutting_down"):
    """The node is draining for shutdown and takes no new requests."""


class SwapInProgress(APIError, status=409, type="invalid_request_error", code="swap_in_progress"):
    """Another model swap is under way; retry when it has finished."""


class ModelLoadFailed(APIError, status=400, type="invalid_request_error", code="model_load_failed"):
    """The model file asked for could not be loaded."""


class ModelPathNotAllowed(
    APIError, status=403, type="permission_error", code="model_path_not_allowed"
):
    """The admin swap named a file outside the configured model directories."""


class InvalidImage(BadRequest, code="invalid_image"):
    """An image part that is not a readable PNG, JPEG or WebP data URI."""


class ImageLimitExceeded(BadRequest, code="image_too_large"):
    """An image, or a request's images, over the node's limits (bytes, pixels, count)."""


class RemoteImageRefused(BadRequest, code="image_url_not_allowed"):
    """A remote image URL on a host the node does not fetch from."""


class ImageFetchFailed(InvalidImage, code="image_fetch_failed"):
    """An allowed remote image URL that could not be fetched."""


class ModelSwapped(APIError, status=503, type="service_unavailable", code="model_swapped"):
    """The model (and its projector) was swapped while the request's images were read."""
