"""JSON Schemas and tool calls to GBNF grammars for llama.cpp's grammar sampler.

The conversion is llama-cpp-python's port of llama.cpp's json-schema-to-grammar, with three
changes: a schema is first checked keyword by keyword, so one the grammar cannot enforce is
refused by name (a 400) instead of being silently loosened; strings exclude raw control
characters (they are not valid JSON); integers honour `minimum`/`maximum` and their exclusive
forms. Everything here is pure: text in, grammar text out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

from llama_cpp.llama_grammar import BuiltinRule, SchemaConverter

from edgecloud.api.errors import BadRequest

# Keywords the converter enforces; annotation keywords carry no constraint and are ignored.
SUPPORTED_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)
ANNOTATION_KEYWORDS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "strict",
        "discriminator",  # pydantic/OpenAPI: the union members already say which is which
    }
)
TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid3", "uuid4", "uuid5"})
# Bounded repetitions expand into nested rules: cap them so a schema cannot blow the parser up.
MAX_REPEAT = 1000
MAX_SCHEMA_NODES = 5000
MAX_INT_DIGITS = 16

# JSON strings: no unescaped quote, backslash or control character.
_JSON_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    [],
)


_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


class UnsupportedSchema(BadRequest):
    code = "unsupported_schema"


def schema_grammar(schema: Any, param: str = "response_format.json_schema.schema") -> str:
    """A GBNF grammar whose sentences are exactly the JSON documents valid against `schema`."""
    check_schema(schema, param)
    return _convert(schema, param)


def json_object_grammar() -> str:
    """Any JSON object (`response_format: {"type": "json_object"}`)."""
    return _convert({"type": "object"}, "response_format")


def check_schema(schema: Any, param: str) -> None:
    """Refuse (400, naming the keyword and where) anything the grammar would not enforce."""
    count = 0
    for node, ptr in _nodes(schema, "#"):
        count += 1
        if count > MAX_SCHEMA_NODES:
            raise UnsupportedSchema(
                f"The schema has more than {MAX_SCHEMA_NODES} subschemas.", param=param
            )
        _check_node(node, ptr, param)


def _unsupported(msg: str, ptr: str, param: str) -> UnsupportedSchema:
    return UnsupportedSchema(f"Schema at '{ptr}': {msg}", param=param)


def _check_node(node: Any, ptr: str, param: str) -> None:
    """Refuse one subschema for the first of `_NODE_CHECKS` it breaks (its children are
    checked as nodes of their own by `check_schema`)."""
    if node is True or node == {}:
        return
    if not isinstance(node, dict):
        raise _unsupported("a subschema must be a JSON object (or true).", ptr, param)
    for check in _NODE_CHECKS:
        problem = check(node)
        if problem is not None:
            raise _unsupported(problem, ptr, param)


# Each check takes one subschema (a dict) and returns what is wrong with it, or None.


def _unknown_keyword(node: dict[str, Any]) -> str | None:
    for key in node:
        if key not in SUPPORTED_KEYWORDS and key not in ANNOTATION_KEYWORDS:
            return (f"the keyword '{key}' is not supported in structured output; remove it or "
                    "express it with supported keywords.")
    return None


def _bad_type(node: dict[str, Any]) -> str | None:
    types = node.get("type")
    for t in types if isinstance(types, list) else [types] if types is not None else []:
        if not isinstance(t, str) or t not in TYPES:
            return f"'type' must be one of {sorted(TYPES)}, not {t!r}."
    if isinstance(types, list) and any(k in node for k in ("properties", "items", "enum")):
        return ("a list of types cannot be combined with 'properties', 'items' or 'enum'; "
                "use 'anyOf'.")
    return None


def _bad_ref(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    if ref is None:
        return None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return f"'$ref' must point inside the schema ('#/...'), not {ref!r}."
    extra = [k for k in node if k != "$ref" and k not in ANNOTATION_KEYWORDS]
    return f"the keyword '{extra[0]}' beside '$ref' is not supported." if extra else None


def _bad_list(node: dict[str, Any]) -> str | None:
    for key in ("enum", "anyOf", "oneOf", "allOf"):
        if key in node and (not isinstance(node[key], list) or not node[key]):
            return f"'{key}' must be a non-empty list."
    if any(not isinstance(sub, dict) or not ("properties" in sub or "$ref" in sub)
           for sub in node.get("allOf", ())):
        return ("'allOf' is supported only for merging objects "
                "(members with 'properties' or a '$ref').")
    return None


def _bad_string_rule(node: dict[str, Any]) -> str | None:
    fmt = node.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
        return (f"the string format '{fmt}' is not supported (supported: "
                f"{', '.join(sorted(FORMATS))}).")
    rules = [k for k in ("pattern", "format", "minLength", "maxLength") if k in node]
    if len(rules) > 1 and not set(rules) <= {"minLength", "maxLength"}:
        return f"'{rules[0]}' and '{rules[1]}' cannot be combined."
    pattern = node.get("pattern")
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        return "'pattern' must be a string."
    counts = [g for m in _QUANTIFIER.finditer(pattern) for g in m.groups() if g]
    if any(len(n) > 6 or int(n) > MAX_REPEAT for n in counts):
        return f"repetition counts above {MAX_REPEAT} in 'pattern' are not supported."
    return None


def _bad_count(node: dict[str, Any]) -> str | None:
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        v = node.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            return f"'{key}' must be a non-negative integer."
        if isinstance(v, int) and v > MAX_REPEAT:
            return f"'{key}' above {MAX_REPEAT} is not supported."
    return None


def _bad_bounds(node: dict[str, Any]) -> str | None:
    bounds = [k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
              if k in node]
    if not bounds:
        return None
    if node.get("type") != "integer":
        return f"'{bounds[0]}' is supported only on integers."
    for k in bounds:
        v = node[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or (
            isinstance(v, float) and not math.isfinite(v)
        ):
            return f"'{k}' must be a number."
        if abs(v) >= 10**MAX_INT_DIGITS:
            return f"'{k}' is out of range."
    lo, hi = _int_bounds(node)
    if lo is not None and hi is not None and lo > hi:
        return "no integer lies within the bounds."
    return None


def _bad_object(node: dict[str, Any]) -> str | None:
    props = node.get("properties")
    if props is not None and not isinstance(props, dict):
        return "'properties' must be an object."
    required = node.get("required")
    if required is None:
        return None
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return "'required' must be a list of property names."
    missing = [r for r in required if r not in (props or {})]
    return f"'required' names '{missing[0]}', which is not in 'properties'." if missing else None


_NODE_CHECKS = (
    _unknown_keyword,
    _bad_type,
    _bad_ref,
    _bad_list,
    _bad_string_rule,
    _bad_count,
    _bad_bounds,
    _bad_object,
)


def _nodes(node: Any, ptr: str) -> Iterator[tuple[Any, str]]:
    """Every subschema with its JSON pointer, depth first."""
    stack = [(node, ptr)]
    while stack:
        cur, where = stack.pop()
        yield cur, where
        if not isinstance(cur, dict):
            continue
        for key in ("properties", "$defs", "definitions"):
            children = cur.get(key)
            if isinstance(children, dict):
                stack.extend((v, f"{where}/{key}/{k}") for k, v in children.items())
        for key in ("items", "additionalProperties"):
            child = cur.get(key)
            if isinstance(child, dict):
                stack.append((child, f"{where}/{key}"))
        for key in ("prefixItems", "anyOf", "oneOf", "allOf", "items"):
            children = cur.get(key)
            if isinstance(children, list):
                stack.extend((v, f"{where}/{key}/{i}") for i, v in enumerate(children))


def _convert(schema: Any, param: str, root_prefix: str = "", root_suffix: str = "") -> str:
    conv = _Converter()
    try:
        resolved = conv.resolve_refs(schema, "")
        name = conv.visit(resolved, "value" if root_prefix or root_suffix else "")
        if root_prefix or root_suffix:
            conv.set_root(f"{_literal(root_prefix)} {name} {_literal(root_suffix)}")
        return str(conv.format_grammar())
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(
            f"The schema could not be turned into a grammar: {exc}", param=param
        ) from None


def _literal(text: str) -> str:
    return json.dumps(text) if text else ""


class _Converter(SchemaConverter):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def set_root(self, rule: str) -> None:
        self._rules["root"] = rule

    def ref_rule(self, ref: str) -> str:
        return str(self._resolve_ref(ref))

    def add_rule(self, name: str, rule: str) -> str:
        return str(self._add_rule(name, rule))

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        if name == "char":
            rule = _JSON_CHAR
        return str(super()._add_primitive(name, rule))

    def visit(self, schema: dict[str, Any], name: str) -> str:
        if schema.get("type") == "integer" and any(
            k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        ):
            lo, hi = _int_bounds(schema)
            rule_name = name or "root"
            return self.add_rule(rule_name + "-int", f"({int_range_rule(lo, hi)}) space")
        return str(super().visit(schema, name))


# -- integers within bounds ------------------------------------------------------------------


def _int_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    lo: int | None = None
    hi: int | None = None
    if "minimum" in schema:
        lo = math.ceil(schema["minimum"])
    if "exclusiveMinimum" in schema:
        x = math.floor(schema["exclusiveMinimum"]) + 1
        lo = x if lo is None else max(lo, x)
    if "maximum" in schema:
        hi = math.floor(schema["maximum"])
    if "exclusiveMaximum" in schema:
        x = math.ceil(schema["exclusiveMaximum"]) - 1
        hi = x if hi is None else min(hi, x)
    return lo, hi


def int_range_rule(lo: int | None, hi: int | None) -> str:
    """GBNF for the decimal integers in [lo, hi] (None: unbounded), without leading zeros."""
    alts: list[str] = []
    if lo is None or lo < 0:
        # Negative numbers -m with m in [max(1, -hi), -lo].
        m_lo = 1 if hi is None or hi >= -1 else -hi
        m_hi = None if lo is None else -lo
        alts.append('"-" (' + _nonneg_range(m_lo, m_hi) + ")")
    if hi is None or hi >= 0:
        alts.append(_nonneg_range(max(lo or 0, 0), hi))
    return " | ".join(f"({a})" for a in alts)


def _nonneg_range(lo: int, hi: int | None) -> str:
    top = 10**MAX_INT_DIGITS - 1
    hi = top if hi is None else min(hi, top)
    alts = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = min(hi, 10**n - 1)
        if a <= b:
            alts.append(_same_length(str(a), str(b)))
    return " | ".join(alts)


def _same_length(lo: str, hi: str) -> str:
    """Digit strings of one length between lo and hi (the classic regex range split)."""
    if not lo:
        return '""'
    n = len(lo)
    if lo == hi:
        return json.dumps(lo)
    if lo[1:] == "0" * (n - 1) and hi[1:] == "9" * (n - 1):
        return f"[{lo[0]}-{hi[0]}]" + (f" [0-9]{{{n - 1}}}" if n > 1 else "")
    if lo[0] == hi[0]:
        return f'"{lo[0]}" (' + _same_length(lo[1:], hi[1:]) + ")"
    parts = [f'"{lo[0]}" (' + _same_length(lo[1:], "9" * (n - 1)) + ")"]
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}] [0-9]{{{n - 1}}}")
    parts.append(f'"{hi[0]}" (' + _same_length("0" * (n - 1), hi[1:]) + ")")
    return " | ".join(parts)


# -- tool calls --------------------------------------------------------------------------------


def tools_root_schema(
    tools: Sequence[tuple[str, dict[str, Any] | None]], param: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One schema whose `$defs` hold every tool's parameters; returns it and the call schemas.

    A call is `{"name": NAME, "arguments": {...}}`. Each tool's parameters move to
    `$defs/tool-INDEX` and its own definitions to `$defs/tINDEX-NAME`, with their `$ref`s
    rewritten, so several tools' definitions share one root without clashing.
    """
    defs: dict[str, Any] = {}
    calls = []
    for i, (name, params) in enumerate(tools):
        params = params if params else {"type": "object", "properties": {}}
        check_schema(params, param)
        own = {**params.get("$defs", {}), **params.get("definitions", {})}
        body = {k: v for k, v in params.items() if k not in ("$defs", "definitions")}
        defs[f"tool-{i}"] = _rebase_refs(body, i)
        for def_name, sub in own.items():
            defs[f"t{i}-{def_name}"] = _rebase_refs(sub, i)
        calls.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": {"$ref": f"#/$defs/tool-{i}"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return {"$defs": defs}, calls


def _rebase_refs(node: Any, index: int) -> Any:
    if isinstance(node, dict):
        out = {k: _rebase_refs(v, index) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            parts = ref[2:].split("/")
            if len(parts) >= 2 and parts[0] in ("$defs", "definitions"):
                out["$ref"] = "/".join(["#", "$defs", f"t{index}-{parts[1]}", *parts[2:]])
            else:
                out["$ref"] = f"#/$defs/tool-{index}/" + ref[2:]
        return out
    if isinstance(node, list):
        return [_rebase_refs(v, index) for v in node]
    return node


def tool_call_grammar(
    tools: Sequence[tuple[str, dict[str, Any] | None]],
    *,
    name_first: bool = False,
    prefix: str = "",
    suffix: str = "",
    max_calls: int = 1,
    param: str = "tools",
) -> str:
    """Between one and `max_calls` calls to the given tools, each `prefix CALL suffix`.

    CALL is `{"name": NAME, "arguments": {...}}`, or with `name_first` the name on its own
    line followed by the arguments object (GLM-4's form). The arguments always validate
    against the tool's parameters.
    """
    root, calls = tools_root_schema(tools, param)
    refs = [{"$ref": f"#/$defs/tool-{i}"} for i in range(len(tools))]
    conv = _Converter()
    try:
        if name_first:
            conv.resolve_refs({**root, "anyOf": refs}, "")
            alts = [
                f"{_literal(name + chr(10))} {conv.ref_rule(ref['$ref'])}"
                for (name, _), ref in zip(tools, refs, strict=True)
            ]
            call = conv.add_rule("call", " | ".join(alts))
        else:
            schema = {**root, "anyOf": calls} if len(calls) > 1 else {**root, **calls[0]}
            call = conv.visit(conv.resolve_refs(schema, ""), "call")
        one = " ".join(x for x in (_literal(prefix), call, _literal(suffix)) if x)
        one = conv.add_rule("tool-call", one)
        more = f' ("\\n" {one}){{0,{max_calls - 1}}}' if max_calls > 1 else ""
        conv.set_root(one + more)
        return str(conv.format_grammar())
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsupportedSchema(
            f"The tool parameters could not be turned into a grammar: {exc}", param=param
        ) from None
