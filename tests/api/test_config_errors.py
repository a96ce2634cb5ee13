"""Every YAML input reports a problem the same way: `FILE:LINE: FIELD: MESSAGE`, one per line.

The four configurations (node, gateway, decide's workload, deploy's values) load through the one
loader in `edgecloud.api.yamlconfig`; each package raises its own subclass of its ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecloud.api.yamlconfig import ConfigError
from edgecloud.decide.errors import DecideError
from edgecloud.decide.inputs import Workload
from edgecloud.decide.loading import load_yaml
from edgecloud.deploy.errors import DeployError
from edgecloud.deploy.values import load_values
from edgecloud.gateway import errors as gateway_errors
from edgecloud.gateway.config import load_config
from edgecloud.node import errors as node_errors
from edgecloud.node.config import build_config

WORKLOAD = """\
requests_per_day: 1000
tokens:
  input_per_request: 100
  output_per_request: 10
slo:
  ttft_ms: 500
  e2e_ms: 4000
"""
GATEWAY = """\
endpoints:
  - name: edge-local
    tier: edge
    url: http://127.0.0.1:8081/v1
policy:
  offload: {edge_queue_above: 2}
"""


def _node(path: Path) -> object:
    return build_config(str(path), {})


def _decide(path: Path) -> object:
    return load_yaml(path, Workload)


# name, loader, the package's own error type, a good file, (old, new) making line 4 bad, field.
CASES: list[tuple[str, Callable[[Path], Any], type[Exception], str, tuple[str, str], str]] = [
    ("node", _node, node_errors.ConfigError, "host: 127.0.0.1\nport: 9000\nctx: 4096\nparallel: 2\n",
     ("parallel: 2", "parallel: 0"), "parallel"),
    ("gateway", load_config, gateway_errors.ConfigError, GATEWAY,
     ("url: http://127.0.0.1:8081/v1", "url: ftp://x"), "endpoints.0.url"),
    ("decide", _decide, DecideError, WORKLOAD,
     ("output_per_request: 10", "output_per_request: -3"), "tokens.output_per_request"),
    ("deploy", load_values, DeployError, "namespace: edge\nnode:\n  autoscaling:\n"
     "    min_replicas: 2\n", ("min_replicas: 2", "min_replicas: zero"),
     "node.autoscaling.min_replicas"),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("name", "load", "own", "good", "edit", "field"), CASES, ids=IDS)
def test_a_bad_value_names_file_line_and_field(
    tmp_path: Path, name: str, load: Callable[[Path], Any], own: type[Exception], good: str,
    edit: tuple[str, str], field: str,
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(good)
    load(path)  # the good file loads
    assert edit[0] in good
    path.write_text(good.replace(*edit))
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert isinstance(exc.value, own)
    assert (exc.value.file, exc.value.line, exc.value.field) == (str(path), 4, field)
    assert str(exc.value).startswith(f"{path}:4: {field}: "), str(exc.value)


@pytest.mark.parametrize(("name", "load", "own", "good", "edit", "field"), CASES, ids=IDS)
def test_an_unknown_key_is_refused_at_its_line(
    tmp_path: Path, name: str, load: Callable[[Path], Any], own: type[Exception], good: str,
    edit: tuple[str, str], field: str,
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(good + "colour: red\n")
    line = good.count("\n") + 1
    with pytest.raises(own) as exc:
        load(path)
    assert str(exc.value) == f"{path}:{line}: colour: unknown field (check its spelling)"


@pytest.mark.parametrize(("name", "load", "own", "good", "edit", "field"), CASES, ids=IDS)
def test_broken_yaml_missing_files_and_lists_are_reported_alike(
    tmp_path: Path, name: str, load: Callable[[Path], Any], own: type[Exception], good: str,
    edit: tuple[str, str], field: str,
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(good + "x: [unclosed\n")
    with pytest.raises(own) as exc:
        load(path)
    assert str(exc.value).startswith(f"{path}:{good.count(chr(10)) + 2}: not valid YAML: ")
    path.write_text("- a\n- b\n")
    with pytest.raises(own, match=r"\.yaml:1: expected a mapping of settings at the top level$"):
        load(path)
    with pytest.raises(own) as exc:
        load(tmp_path / "missing.yaml")
    assert str(exc.value) == f"{tmp_path / 'missing.yaml'}: file not found"


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("port: http\nctx: 1\n")
    with pytest.raises(node_errors.ConfigError) as exc:
        build_config(str(path), {})
    assert str(exc.value).splitlines() == [
        f"{path}:1: port: Input should be a valid integer, unable to parse string as an integer",
        f"{path}:2: ctx: Input should be greater than or equal to 128",
    ]
    assert [p.line for p in exc.value.problems] == [1, 2]


def test_a_value_from_the_command_line_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("port: 9000\n")
    with pytest.raises(node_errors.ConfigError) as exc:
        build_config(str(path), {"ctx": 10, "port": None})
    assert str(exc.value) == "command line: ctx: Input should be greater than or equal to 128"
