"""The exceptions of `edgecloud decide`: every one says which input was wrong and where."""

from __future__ import annotations

from edgecloud.api.yamlconfig import ConfigError


class DecideError(Exception):
    """Base of every error `edgecloud decide` raises on purpose."""


class InputError(DecideError, ConfigError):
    """A workload, prices or bench file that is missing or invalid.

    `field` is the dotted path of the offending value, `line` its 1-based line in `file`
    when known; str() is `FILE:LINE: FIELD: MESSAGE`, the format of every config error.
    """


class BenchMismatch(InputError):
    """Bench files that cannot be compared (different models or schema versions)."""
