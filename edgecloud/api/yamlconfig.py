"""Where a configuration error is: the YAML line of a pydantic error location.

Every YAML input (gateway config, node config, decide workload and prices, deploy values)
names the file, the line and the field of a bad setting; this is the one place that finds
the line.
"""

from __future__ import annotations

import yaml

Location = tuple[int | str, ...]


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


def compose(text: str) -> yaml.Node | None:
    """The YAML node tree of `text` (for yaml_line); raises yaml.YAMLError like safe_load."""
    return yaml.compose(text, Loader=yaml.SafeLoader)
