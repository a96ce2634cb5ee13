"""The exception tree of edgecloud.fleet: callers catch what they mean."""

from __future__ import annotations

from edgecloud.api.yamlconfig import ConfigError


class FleetError(Exception):
    """Base of every error raised by edgecloud.fleet."""


class CanaryFileError(ConfigError, FleetError):
    """The agent's canary file is unreadable or an entry is invalid (`FILE:LINE: FIELD: ...`)."""


class ReleaseError(FleetError):
    """A repository operation (init, add, rollout, rollback, rotate-key) cannot be done."""


class KeyNotFound(ReleaseError):
    """A signing key that a role needs is neither in the keys folder nor in the environment."""


class AgentError(FleetError):
    """Something the agent tried failed; the box keeps serving its verified version."""


class UpdateRefused(AgentError):
    """The agent refused an update (bad metadata, bad bytes, incompatible); `reason` says why."""

    def __init__(self, reason: str, detail: str = "", version: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.version = version


class ActivationFailed(AgentError):
    """The node refused the new model, or it failed its readiness or canary checks."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NodeUnreachable(AgentError):
    """The node's admin API did not answer."""


class NodeBusy(AgentError):
    """The node is in the middle of another model swap (HTTP 409): try again later."""


class NodeAdminRefused(AgentError):
    """The node's admin API refused the agent itself (token, allowed model folders): a setup
    problem of this box, not a fault of the version being installed."""


class TransferTooSlow(AgentError):
    """A download ran past its deadline or below the minimum rate; `reason` says which."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CredentialError(FleetError):
    """The fleet server refused a token or an enrolment; `status` and `code` for the reply."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
