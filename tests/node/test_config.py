"""Node configuration: YAML plus flags; a bad setting names the file, line and field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgecloud.node.config import build_config
from edgecloud.node.errors import ConfigError
from edgecloud.supervise import edgecloud_command


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


def test_parallel_above_batch_is_refused_naming_both_values(tmp_path: Path) -> None:
    f = tmp_path / "node.yaml"
    f.write_text("parallel: 64\nbatch: 32\n")
    for file, flags in ((str(f), {}), (None, {"parallel": 64, "batch": 32})):
        with pytest.raises(ConfigError) as err:
            build_config(file, flags)
        assert "parallel (64)" in str(err.value) and "batch (32)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        build_config(str(f), {})
    assert "node.yaml:2:" in str(err.value)
    assert build_config(None, {"parallel": 64, "batch": 64}).batch == 64


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"ctx": 0}, "ctx"),
        ({"ctx": 1 << 40}, "ctx"),
        ({"batch": 0}, "batch"),
        ({"batch": 1 << 30}, "batch"),
        ({"parallel": 0}, "parallel"),
        ({"parallel": 100_000}, "parallel"),
        ({"threads": 0}, "threads"),
        ({"threads": 100_000}, "threads"),
        ({"max_queue": -1}, "max_queue"),
    ],
)
def test_values_llama_cpp_cannot_run_are_config_errors(
    flags: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        build_config(None, flags)
    assert str(err.value).startswith(f"command line: {field}: ")


def test_the_cli_refuses_an_overflowing_config_before_loading_anything(tmp_path: Path) -> None:
    f = tmp_path / "node.yaml"
    f.write_text("parallel: 64\nbatch: 32\n")
    for args in (["--parallel", "64", "--batch", "32", "--lazy"], ["--config", str(f), "--lazy"]):
        p = subprocess.run(
            edgecloud_command("serve", "--port", "0", *args),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 2, p.stderr
        assert "parallel (64)" in p.stderr and "batch (32)" in p.stderr
