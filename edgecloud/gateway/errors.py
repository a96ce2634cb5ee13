"""Errors of the gateway; the HTTP edge maps the APIError ones onto the OpenAI envelope."""

from __future__ import annotations

from edgecloud.api.errors import APIError
from edgecloud.api.yamlconfig import ConfigError as _ConfigFileError


class ConfigError(_ConfigFileError):
    """The gateway configuration is invalid; the message names the file, line and field."""


class RuleError(APIError):
    """An error that names the policy rule behind it; a 5xx one says when to retry."""

    def __init__(self, rule: str, message: str, code: str | None = None) -> None:
        super().__init__(f"{rule}: {message}", code=code,
                         headers={"retry-after": "1"} if self.status >= 500 else None)
        self.rule = rule


class NoAllowedEndpoint(
    RuleError, status=503, type="service_unavailable", code="no_allowed_endpoint"
):
    """Policy left no endpoint that may take the request (fail closed)."""


class CapabilityMissing(RuleError, status=400, type="invalid_request_error"):
    """No allowed endpoint can serve what the request needs (images, a long context)."""

    def __init__(self, rule: str, message: str, code: str) -> None:
        super().__init__(rule, message, code)


class UpstreamFailed(RuleError, status=502, type="upstream_error", code="upstream_failed"):
    """Every allowed endpoint failed before the first byte reached the client."""


class UpstreamCut(APIError, status=502, type="upstream_error", code="upstream_cut"):
    """The endpoint failed after the stream began: the event that ends the client's stream."""


class RateLimited(APIError, status=429, type="requests", code="rate_limit_exceeded"):
    """A key is over its rpm, tpm or max_parallel; Retry-After says when to come back."""


class InsufficientQuota(RuleError, status=429, type="insufficient_quota",
                        code="insufficient_quota"):
    """A budget cap is spent and only the cloud could take the request."""


class BudgetUnavailable(RuleError, status=503, type="service_unavailable",
                        code="budget_unavailable"):
    """The shared store that keeps a capped budget is down, so the cloud is paused, and only
    the cloud could take the request."""
