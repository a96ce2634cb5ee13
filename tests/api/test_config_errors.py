"""Every YAML input reports a problem the same way: `FILE:LINE: FIELD: MESSAGE`, one per line.

The four configurations (node, gateway, decide's workload, deploy's values) load through the one
loader in `edgecloud.api.yamlconfig`; each package raises its own subclass of its ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
from tests.decide.test_loading import GOOD as WORKLOAD

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


@dataclass(frozen=True)
class Case:
    """One configuration: its loader, its package's error type, a good file, an edit that makes
    line 4 bad, and the field that edit breaks."""

    name: str
    load: Callable[[Path], Any]
    own: type[Exception]
    good: str
    edit: tuple[str, str]
    field: str


CASES = [
    Case("node", _node, node_errors.ConfigError,
         "host: 127.0.0.1\nport: 9000\nctx: 4096\nparallel: 2\n",
         ("parallel: 2", "parallel: 0"), "parallel"),
    Case("gateway", load_config, gateway_errors.ConfigError, GATEWAY,
         ("url: http://127.0.0.1:8081/v1", "url: ftp://x"), "endpoints.0.url"),
    Case("decide", _decide, DecideError, WORKLOAD,
         ("output_per_request: 10", "output_per_request: -3"), "tokens.output_per_request"),
    Case("deploy", load_values, DeployError,
         "namespace: edge\nnode:\n  autoscaling:\n    min_replicas: 2\n",
         ("min_replicas: 2", "min_replicas: zero"), "node.autoscaling.min_replicas"),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    return c


def test_a_bad_value_names_file_line_and_field(tmp_path: Path, case: Case) -> None:
    path = tmp_path / f"{case.name}.yaml"
    path.write_text(case.good)
    case.load(path)  # the good file loads
    assert case.edit[0] in case.good
    path.write_text(case.good.replace(*case.edit))
    with pytest.raises(ConfigError) as exc:
        case.load(path)
    assert isinstance(exc.value, case.own)
    assert (exc.value.file, exc.value.line, exc.value.field) == (str(path), 4, case.field)
    assert str(exc.value).startswith(f"{path}:4: {case.field}: "), str(exc.value)


def test_an_unknown_key_is_refused_at_its_line(tmp_path: Path, case: Case) -> None:
    path = tmp_path / f"{case.name}.yaml"
    path.write_text(case.good + "colour: red\n")
    line = case.good.count("\n") + 1
    with pytest.raises(case.own) as exc:
        case.load(path)
    assert str(exc.value) == f"{path}:{line}: colour: unknown field (check its spelling)"


def test_broken_yaml_missing_files_and_lists_are_reported_alike(
    tmp_path: Path, case: Case
) -> None:
    path = tmp_path / f"{case.name}.yaml"
    path.write_text(case.good + "x: [unclosed\n")
    with pytest.raises(case.own) as exc:
        case.load(path)
    assert str(exc.value).startswith(f"{path}:{case.good.count(chr(10)) + 2}: not valid YAML: ")
    path.write_text("- a\n- b\n")
    with pytest.raises(case.own, match=r"\.yaml:1: expected a mapping of settings at the top"):
        case.load(path)
    with pytest.raises(case.own) as exc:
        case.load(tmp_path / "missing.yaml")
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
