"""The exceptions of `edgecloud decide`: every one says which input was wrong and where."""

from __future__ import annotations


class DecideError(Exception):
    """Base of every error `edgecloud decide` raises on purpose."""


class InputError(DecideError):
    """A workload, prices or bench file that is missing or invalid.

    `field` is the dotted path of the offending value, `line` its 1-based line in `file`
    when known.
    """

    def __init__(
        self, message: str, *, file: str = "", field: str = "", line: int | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.field = field
        self.line = line
        where = file
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        parts = [p for p in (where, field) if p]
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class BenchMismatch(InputError):
    """Bench files that cannot be compared (different models or schema versions)."""
