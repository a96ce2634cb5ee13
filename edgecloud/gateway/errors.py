"""Errors of the gateway; the HTTP edge maps the APIError ones onto the OpenAI envelope."""

from __future__ import annotations

from edgecloud.api.errors import APIError
from edgecloud.api.yamlconfig import ConfigError as _ConfigFileError


class ConfigError(_ConfigFileError):
    """The gateway configuration is invalid; the message names the file, line and field."""


class NoAllowedEndpoint(APIError):
    """Policy left no endpoint that may take the request (fail closed)."""

    status = 503
    type = "service_unavailable"
    code = "no_allowed_endpoint"

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}", headers={"retry-after": "1"})
        self.rule = rule


class CapabilityMissing(APIError):
    """No allowed endpoint can serve what the request needs (images, a long context)."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, rule: str, message: str, code: str) -> None:
        super().__init__(f"{rule}: {message}", code=code)
        self.rule = rule


class UpstreamFailed(APIError):
    """Every allowed endpoint failed before the first byte reached the client."""

    status = 502
    type = "upstream_error"
    code = "upstream_failed"

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}", headers={"retry-after": "1"})
        self.rule = rule
