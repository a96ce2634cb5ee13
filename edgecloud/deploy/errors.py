"""Errors of edgecloud.deploy: one tree, so callers catch what they mean."""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error raised while rendering deployment files."""


class ValuesError(DeployError):
    """A values file is unreadable or invalid; the message names the field and the line."""


class CapacityError(DeployError):
    """A bench results file gives no usable per-replica capacity."""
