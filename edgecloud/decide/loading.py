"""Reading the inputs from files: YAML with line numbers for errors, bench JSON with checks.

This is the I/O edge of the package; everything it returns is validated pydantic data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgecloud.bench.results import SCHEMA_VERSION, BenchResults
from edgecloud.decide.errors import BenchMismatch, InputError

M = TypeVar("M", bound=BaseModel)
_Path = tuple[str | int, ...]


def _lines(node: yaml.Node, path: _Path, out: dict[_Path, int]) -> None:
    """Record the 1-based line of every value (and key) under `node`."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            out[sub] = key.start_mark.line + 1
            _lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def _line_for(loc: _Path, lines: dict[_Path, int]) -> int | None:
    # The deepest prefix of the error's location that exists in the file.
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def parse_yaml(text: str, model: type[M], file: str = "") -> M:
    """Validate YAML text against `model`; errors name the field and its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"not valid YAML ({getattr(exc, 'problem', exc)})", file=file, line=line)
    if not isinstance(data, dict):
        raise InputError("expected a mapping of fields at the top level", file=file, line=1)
    lines: dict[_Path, int] = {}
    if node is not None:
        _lines(node, (), lines)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        field = ".".join(str(p) for p in loc)
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "this field is required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (check its spelling in docs/decide.md)"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise InputError(msg, file=file, field=field, line=_line_for(loc, lines)) from None


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Read and validate one YAML input file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read it ({exc})", file=str(p)) from None
    return parse_yaml(text, model, file=str(p))


def load_bench(path: str | Path) -> BenchResults:
    """Read one `edgecloud bench` results file, refusing other schema versions."""
    p = Path(path)
    try:
        raw: Any = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("bench file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not a readable JSON bench file ({exc})", file=str(p)) from None
    if not isinstance(raw, dict):
        raise InputError("expected a JSON object (an edgecloud bench results file)", file=str(p))
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BenchMismatch(
            f"results schema version {version!r}, this edgecloud reads version "
            f"{SCHEMA_VERSION}: re-run `edgecloud bench` with this version",
            file=str(p),
            field="schema_version",
        )
    try:
        return BenchResults.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise InputError(err["msg"], file=str(p), field=field) from None
