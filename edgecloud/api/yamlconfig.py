"""Every YAML input, loaded one way: YAML -> pydantic, each error naming file, line and field.

The gateway config, the node config, decide's workload and prices and deploy's values all go
through `load_model` (or `parse_model` for text in hand); a file that is a list of entries (the
fleet agent's canary prompts) through `load_list`. A problem is reported as one line,
`FILE:LINE: FIELD: MESSAGE`, the way compilers do, so editors and CI logs can jump to it;
several problems give several lines. Packages raise their own subclass of `ConfigError` (pass
it as `error`) so that callers catch what they mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

Location = tuple[int | str, ...]
M = TypeVar("M", bound=BaseModel)

# Where values given on the command line are reported (they have no file line).
COMMAND_LINE = "command line"


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration: where it is and what to do about it."""

    file: str
    message: str
    line: int | None = None
    field: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else self.file
        if not where and self.line:
            where = f"line {self.line}"
        return ": ".join(p for p in (where, self.field, self.message) if p)


class ConfigError(Exception):
    """A configuration input that cannot be read or does not validate.

    `problems` holds every problem found; `file`, `line`, `field` and `message` are those of
    the first. str() is one `FILE:LINE: FIELD: MESSAGE` line per problem.
    """

    def __init__(
        self,
        message: str = "",
        *,
        file: str = "",
        field: str = "",
        line: int | None = None,
        problems: Sequence[ConfigProblem] = (),
    ) -> None:
        found = tuple(problems) or (ConfigProblem(file, message, line, field),)
        self.problems = found
        first = found[0]
        self.file, self.line, self.field, self.message = (
            first.file,
            first.line,
            first.field,
            first.message,
        )
        super().__init__("\n".join(str(p) for p in found))


def yaml_line(node: yaml.Node | None, loc: Location) -> int | None:
    """1-based line of the YAML node at `loc`, or of its deepest parent present in the file."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            nxt = node.value[part] if 0 <= part < len(node.value) else None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def load_model(
    path: str | Path,
    model: type[M],
    *,
    base: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    error: type[ConfigError] = ConfigError,
) -> M:
    """Read the YAML file at `path` and validate it as `model` (see `parse_model`)."""
    p = Path(path)
    return parse_model(_read(p, error), model, str(p), base=base, overrides=overrides,
                       error=error)


def load_list(path: str | Path, item: type[M], *, error: type[ConfigError] = ConfigError
              ) -> list[M]:
    """Read the YAML file at `path`, a list at the top level, and validate each entry as
    `item`; a problem names the file, the line and the entry (`FILE:LINE: 2.FIELD: ...`)."""
    p = Path(path)
    source = str(p)
    root, data = _compose(_read(p, error), source, error)
    if not isinstance(data, list):
        raise error("expected a list of entries at the top level", file=source, line=1)
    try:
        return TypeAdapter(list[item]).validate_python(data)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise error(problems=[_problem(e, root, source, {}) for e in exc.errors()]) from None


def parse_model(
    text: str,
    model: type[M],
    source: str = "<config>",
    *,
    base: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    error: type[ConfigError] = ConfigError,
) -> M:
    """Validate YAML `text` as `model`; raise `error` naming file, line and field of each problem.

    `base` is a mapping the document is laid over (nested mappings merge); `overrides` are
    top-level values from the command line, applied last and reported as such.
    """
    root, data = _compose(text, source, error)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error("expected a mapping of settings at the top level", file=source, line=1)
    merged = _deep_merge(dict(base), data) if base is not None else data
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged.update(given)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = [_problem(err, root, source, given) for err in exc.errors()]
        raise error(problems=problems) from None


def _read(path: Path, error: type[ConfigError]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise error(f"cannot read it ({reason})", file=str(path)) from None


def _compose(text: str, source: str, error: type[ConfigError]) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for line numbers) and its data; bad YAML names its line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"not valid YAML: {problem}", file=source, line=line) from None


def _problem(
    err: Any, root: yaml.Node | None, source: str, given: Mapping[str, Any]
) -> ConfigProblem:
    # Drop pydantic's validator and union-member labels ("function-after[...]"): they are not
    # keys of the file.
    loc = tuple(
        p
        for p in err["loc"]
        if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
    )
    field = ".".join(str(p) for p in loc) or "(top level)"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "this field is required"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field (check its spelling)"
    if loc and loc[0] in given:
        return ConfigProblem(COMMAND_LINE, msg, None, field)
    return ConfigProblem(source, msg, yaml_line(root, loc), field)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
