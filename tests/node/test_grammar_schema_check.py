"""`check_schema`: which schemas structured output refuses, and the exact 400 message for each.

The table pins every check of `grammar._check_node`, in the order they run (a schema that
breaks two rules is refused for the first), so the checks can be reorganised without a
message changing. Pure: no model is needed.
"""

from __future__ import annotations

from typing import Any

import pytest

from edgecloud.node.grammar import UnsupportedSchema, check_schema

TYPES = "['array', 'boolean', 'integer', 'null', 'number', 'object', 'string']"
FORMATS = "date, date-time, time, uuid, uuid1, uuid3, uuid4, uuid5"
NOT_OBJECT = "a subschema must be a JSON object (or true)."
TYPE_LIST = "a list of types cannot be combined with 'properties', 'items' or 'enum'; use 'anyOf'."
ALL_OF = "'allOf' is supported only for merging objects (members with 'properties' or a '$ref')."
REPEAT = "repetition counts above 1000 in 'pattern' are not supported."
NO_INTEGER = "no integer lies within the bounds."


def keyword(name: str) -> str:
    return (f"the keyword '{name}' is not supported in structured output; remove it or express "
            "it with supported keywords.")


def bad_type(shown: str) -> str:
    return f"'type' must be one of {TYPES}, not {shown}."


def bad_format(shown: str) -> str:
    return f"the string format '{shown}' is not supported (supported: {FORMATS})."


ACCEPTED: list[Any] = [
    True,
    {},
    {"type": "string", "title": "x", "description": "d"},
    {"type": ["string", "null"]},
    {"$ref": "#/$defs/a", "description": "d"},
    {"enum": [1, "a"]},
    {"allOf": [{"properties": {}}, {"$ref": "#/x"}]},
    {"type": "string", "format": "date"},
    {"minLength": 1, "maxLength": 2},
    {"pattern": "a{2,5}"},
    {"pattern": "a{1000}"},
    {"maxItems": 1000},
    {"minItems": None},  # a null count is no count
    {"type": "integer", "exclusiveMaximum": 3, "minimum": 1.5},
    {"type": "integer", "minimum": -(10**16) + 1},
    {"type": "integer", "minimum": 0, "maximum": 10},
    {"properties": {"a": {}}, "required": ["a"]},
]

# (schema, message, where): the message after "Schema at 'WHERE': ".
REFUSED: list[tuple[Any, str, str]] = [
    # the node itself
    (False, NOT_OBJECT, "#"),
    ("string", NOT_OBJECT, "#"),
    (5, NOT_OBJECT, "#"),
    (None, NOT_OBJECT, "#"),
    ([], NOT_OBJECT, "#"),
    ({"properties": {"a": 5}}, NOT_OBJECT, "#/properties/a"),
    # keywords
    ({"foo": 1}, keyword("foo"), "#"),
    ({"foo": 1, "type": "tuple"}, keyword("foo"), "#"),
    # type
    ({"type": "tuple"}, bad_type("'tuple'"), "#"),
    ({"type": ["string", "tuple"]}, bad_type("'tuple'"), "#"),
    ({"type": "tuple", "enum": "x"}, bad_type("'tuple'"), "#"),
    ({"properties": {"a": {"type": "tuple"}}}, bad_type("'tuple'"), "#/properties/a"),
    ({"type": ["string", "null"], "enum": ["a"]}, TYPE_LIST, "#"),
    ({"type": ["object"], "properties": {}}, TYPE_LIST, "#"),
    ({"type": ["array"], "items": {}}, TYPE_LIST, "#"),
    ({"type": [["x"]]}, bad_type("['x']"), "#"),  # unhashable values: a 400, not a crash
    ({"type": {"a": 1}}, bad_type("{'a': 1}"), "#"),
    # $ref
    ({"$ref": 5}, "'$ref' must point inside the schema ('#/...'), not 5.", "#"),
    ({"$ref": "http://x"}, "'$ref' must point inside the schema ('#/...'), not 'http://x'.", "#"),
    ({"enum": [], "$ref": 3}, "'$ref' must point inside the schema ('#/...'), not 3.", "#"),
    ({"$ref": "#/$defs/a", "type": "string"},
     "the keyword 'type' beside '$ref' is not supported.", "#"),
    ({"$ref": "#/a", "enum": []}, "the keyword 'enum' beside '$ref' is not supported.", "#"),
    ({"$defs": {"a": {"type": "bad"}}, "$ref": "#/$defs/a"},
     "the keyword '$defs' beside '$ref' is not supported.", "#"),
    # lists
    ({"enum": []}, "'enum' must be a non-empty list.", "#"),
    ({"enum": "a"}, "'enum' must be a non-empty list.", "#"),
    ({"anyOf": []}, "'anyOf' must be a non-empty list.", "#"),
    ({"oneOf": {}}, "'oneOf' must be a non-empty list.", "#"),
    ({"allOf": []}, "'allOf' must be a non-empty list.", "#"),
    ({"prefixItems": [True, {"enum": []}]}, "'enum' must be a non-empty list.", "#/prefixItems/1"),
    ({"allOf": [{"type": "string"}]}, ALL_OF, "#"),
    ({"allOf": [True]}, ALL_OF, "#"),
    ({"allOf": [1], "format": "email"}, ALL_OF, "#"),
    # strings
    ({"type": "string", "format": "email"}, bad_format("email"), "#"),
    ({"format": 5}, bad_format("5"), "#"),
    ({"format": ["date"]}, bad_format("['date']"), "#"),
    ({"format": {}}, bad_format("{}"), "#"),
    ({"format": "email", "pattern": "a"}, bad_format("email"), "#"),
    ({"pattern": "a", "format": "date"}, "'pattern' and 'format' cannot be combined.", "#"),
    ({"pattern": 5, "format": "date"}, "'pattern' and 'format' cannot be combined.", "#"),
    ({"format": "date", "minLength": 1}, "'format' and 'minLength' cannot be combined.", "#"),
    ({"pattern": "a", "maxLength": 3}, "'pattern' and 'maxLength' cannot be combined.", "#"),
    ({"maxLength": 3, "pattern": "a", "format": "uuid", "minLength": 1},
     "'pattern' and 'format' cannot be combined.", "#"),
    ({"pattern": "a{9999}", "minLength": -1},
     "'pattern' and 'minLength' cannot be combined.", "#"),
    ({"pattern": 5}, "'pattern' must be a string.", "#"),
    ({"pattern": "a{1001}"}, REPEAT, "#"),
    ({"pattern": "a{1,1234567}"}, REPEAT, "#"),
    ({"pattern": "a{0001001}"}, REPEAT, "#"),
    # counts
    ({"minItems": -1}, "'minItems' must be a non-negative integer.", "#"),
    ({"minItems": True}, "'minItems' must be a non-negative integer.", "#"),
    ({"minItems": 1.5}, "'minItems' must be a non-negative integer.", "#"),
    ({"minLength": "3"}, "'minLength' must be a non-negative integer.", "#"),
    ({"minItems": -1, "type": "number", "minimum": 1},
     "'minItems' must be a non-negative integer.", "#"),
    ({"items": {"minItems": -2}}, "'minItems' must be a non-negative integer.", "#/items"),
    ({"maxLength": 1001}, "'maxLength' above 1000 is not supported.", "#"),
    # integer bounds
    ({"type": "number", "minimum": 1}, "'minimum' is supported only on integers.", "#"),
    ({"minimum": 1}, "'minimum' is supported only on integers.", "#"),
    ({"type": ["integer"], "minimum": 1}, "'minimum' is supported only on integers.", "#"),
    ({"type": "number", "maximum": 1, "minimum": 0},
     "'minimum' is supported only on integers.", "#"),
    ({"type": "string", "minimum": 1, "required": 3},
     "'minimum' is supported only on integers.", "#"),
    ({"type": "integer", "minimum": True}, "'minimum' must be a number.", "#"),
    ({"type": "integer", "minimum": "1"}, "'minimum' must be a number.", "#"),
    ({"type": "integer", "minimum": float("inf")}, "'minimum' must be a number.", "#"),
    ({"type": "integer", "maximum": float("nan")}, "'maximum' must be a number.", "#"),
    ({"type": "integer", "maximum": 10**16}, "'maximum' is out of range.", "#"),
    ({"type": "integer", "maximum": 1e300}, "'maximum' is out of range.", "#"),
    ({"type": "integer", "minimum": -(10**400)}, "'minimum' is out of range.", "#"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, NO_INTEGER, "#"),
    ({"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 2}, NO_INTEGER, "#"),
    ({"type": "integer", "minimum": 1.5, "maximum": 1.9}, NO_INTEGER, "#"),
    ({"type": "integer", "minimum": 2, "exclusiveMinimum": 5, "maximum": 5}, NO_INTEGER, "#"),
    # objects
    ({"properties": []}, "'properties' must be an object.", "#"),
    ({"properties": [], "required": "a"}, "'properties' must be an object.", "#"),
    ({"required": "a"}, "'required' must be a list of property names.", "#"),
    ({"required": [1]}, "'required' must be a list of property names.", "#"),
    ({"properties": {"a": {}}, "required": ["b"]},
     "'required' names 'b', which is not in 'properties'.", "#"),
    ({"required": ["a"]}, "'required' names 'a', which is not in 'properties'.", "#"),
    ({"properties": None, "required": ["a"]},
     "'required' names 'a', which is not in 'properties'.", "#"),
]


@pytest.mark.parametrize("schema", ACCEPTED)
def test_schemas_the_grammar_enforces_are_accepted(schema: Any) -> None:
    check_schema(schema, "response_format")


@pytest.mark.parametrize(("schema", "message", "where"), REFUSED)
def test_each_refusal_says_what_and_where(schema: Any, message: str, where: str) -> None:
    with pytest.raises(UnsupportedSchema) as err:
        check_schema(schema, "tools.0.function.parameters")
    assert err.value.message == f"Schema at '{where}': {message}"
    assert (err.value.status, err.value.code) == (400, "unsupported_schema")
    assert err.value.param == "tools.0.function.parameters"
