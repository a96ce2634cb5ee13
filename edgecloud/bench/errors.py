"""Errors of `edgecloud bench`: one tree, so callers catch what they mean."""

from __future__ import annotations


class BenchError(Exception):
    """Base of the bench's own errors."""


class TargetError(BenchError):
    """The endpoint cannot be benchmarked (refused, unauthorized, not OpenAI, hangs)."""


class ColdStartError(BenchError):
    """The server command exited or never produced a first token."""


class WorkloadError(BenchError, ValueError):
    """A workload name or file that cannot be used; the message says which line and why."""


class TokenizerError(BenchError, ValueError):
    """The tokenizer file cannot be used; the message says why."""
