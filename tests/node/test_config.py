"""Node configuration: YAML plus flags; a bad setting names the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.node.config import ConfigError, build_config


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "node.yaml"
    f.write_text("port: 9000\nparallel: 8\nname: my-model\n")
    cfg = build_config(str(f), {"parallel": 2, "port": None})
    assert (cfg.port, cfg.parallel, cfg.name) == (9000, 2, "my-model")
    assert cfg.host == "127.0.0.1"  # safe default


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("port: 9000\nparallel: 0\n", "node.yaml:2: parallel: Input should be greater"),
        ("port: 9000\n\nbogus: 1\n", "node.yaml:3: bogus: unknown field"),
        ("port: [1, 2\n", "node.yaml:2: not valid YAML"),
        ("- just\n- a list\n", "node.yaml:1: expected a mapping"),
    ],
)
def test_bad_settings_are_located(tmp_path: Path, text: str, where: str) -> None:
    f = tmp_path / "node.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        build_config(str(f), {})
    assert where in str(err.value)


def test_a_bad_flag_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    f = tmp_path / "node.yaml"
    f.write_text("port: 9000\n")
    with pytest.raises(ConfigError) as err:
        build_config(str(f), {"ctx": 10})
    assert "node.yaml" not in str(err.value)
    assert str(err.value).startswith("command line: ctx: Input should be greater")
