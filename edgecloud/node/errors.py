"""Errors of the node; the HTTP edge maps the APIError ones onto the OpenAI envelope."""

from __future__ import annotations

from edgecloud.api.errors import APIError
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
