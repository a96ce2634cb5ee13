"""Errors of edgecloud.deploy: one tree, so callers catch what they mean."""

from __future__ import annotations

from edgecloud.api.yamlconfig import ConfigError


class DeployError(Exception):
    """Base of every error raised while rendering deployment files."""


class ValuesError(DeployError, ConfigError):
    """A values file is unreadable or invalid; the message names the file, line and field."""


class CapacityError(DeployError):
    """A bench results file gives no usable per-replica capacity."""
