"""The agent's canary file (`--canary FILE`) loads through the one YAML loader: a problem is
`FILE:LINE: FIELD: MESSAGE`, raised as a FleetError the agent's command reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.api.yamlconfig import ConfigError
from edgecloud.fleet.errors import CanaryFileError, FleetError
from edgecloud.fleet.node_client import DEFAULT_CANARIES, CanaryPrompt, load_canaries

GOOD = """\
# canaries for the support model
- prompt: The capital of France is
  expect: Paris
- prompt: One, two, three,
  max_tokens: 4
"""


def _refused(tmp_path: Path, text: str) -> CanaryFileError:
    path = tmp_path / "canaries.yaml"
    path.write_text(text)
    with pytest.raises(CanaryFileError) as err:
        load_canaries(path)
    assert isinstance(err.value, FleetError) and isinstance(err.value, ConfigError)
    assert err.value.file == str(path)
    return err.value


def test_a_good_file_gives_its_prompts_and_no_file_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "canaries.yaml"
    path.write_text(GOOD)
    assert load_canaries(str(path)) == [
        CanaryPrompt(prompt="The capital of France is", expect="Paris"),
        CanaryPrompt(prompt="One, two, three,", max_tokens=4),
    ]
    assert load_canaries(None) == DEFAULT_CANARIES


def test_broken_yaml_names_its_line(tmp_path: Path) -> None:
    err = _refused(tmp_path, GOOD + "- prompt: a: b\n")
    assert err.line == 6 and "not valid YAML" in err.message
    assert str(err).startswith(f"{err.file}:6: not valid YAML")


def test_a_bad_entry_names_its_line_index_and_field(tmp_path: Path) -> None:
    err = _refused(tmp_path, GOOD + "- prompt: Hello\n  max_tokens: 100000\n")
    assert (err.line, err.field) == (7, "2.max_tokens")
    assert str(err) == f"{err.file}:7: 2.max_tokens: Input should be less than or equal to 256"


def test_every_bad_entry_is_reported(tmp_path: Path) -> None:
    err = _refused(tmp_path, "- prompt: ''\n- expect: x\n- prompt: ok\n  colour: red\n")
    assert [(p.line, p.field) for p in err.problems] == [
        (1, "0.prompt"), (2, "1.prompt"), (4, "2.colour")]
    assert str(err).endswith(":4: 2.colour: unknown field (check its spelling)")
    assert str(err).count("\n") == 2  # one line per problem


@pytest.mark.parametrize("text", ["prompt: not a list\n", "", "just text\n"])
def test_a_file_that_is_not_a_list_says_so(tmp_path: Path, text: str) -> None:
    err = _refused(tmp_path, text)
    assert str(err) == f"{err.file}:1: expected a list of entries at the top level"


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CanaryFileError) as err:
        load_canaries(tmp_path / "nowhere.yaml")
    assert str(err.value) == f"{tmp_path / 'nowhere.yaml'}: file not found"
