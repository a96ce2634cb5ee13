"""Bad or missing inputs: the message names the field and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.decide.errors import InputError
from edgecloud.decide.inputs import Prices, Workload
from edgecloud.decide.loading import DEFAULT_PRICES, load_yaml, parse_yaml

GOOD = """\
requests_per_day: 1000
tokens:
  input_per_request: 100
  output_per_request: 10
slo:
  ttft_ms: 500
  e2e_ms: 4000
"""


def test_a_good_workload_loads() -> None:
    w = parse_yaml(GOOD, Workload)
    assert w.requests_per_day == 1000 and w.horizon_years == 3


def test_a_wrong_value_names_its_field_and_line() -> None:
    text = GOOD.replace("output_per_request: 10", "output_per_request: -3")
    with pytest.raises(InputError) as exc:
        parse_yaml(text, Workload, file="w.yaml")
    assert exc.value.field == "tokens.output_per_request"
    assert exc.value.line == 4
    assert str(exc.value).startswith("w.yaml:4: tokens.output_per_request:")


def test_a_missing_field_is_named() -> None:
    with pytest.raises(InputError) as exc:
        parse_yaml(GOOD.replace("requests_per_day: 1000\n", ""), Workload)
    assert exc.value.field == "requests_per_day"
    assert "required" in exc.value.message


def test_a_misspelt_field_is_refused_at_its_line() -> None:
    with pytest.raises(InputError) as exc:
        parse_yaml(GOOD + "slo_ms: 3\n", Workload)
    assert exc.value.field == "slo_ms" and exc.value.line == 8
    assert "unknown field" in exc.value.message


def test_shares_that_do_not_add_up() -> None:
    with pytest.raises(InputError) as exc:
        parse_yaml(GOOD + "users:\n  regions: {eu: 0.5, us: 0.2}\n", Workload)
    assert exc.value.field == "users.regions" and exc.value.line == 9


def test_broken_yaml_gives_the_line() -> None:
    with pytest.raises(InputError) as exc:
        parse_yaml(GOOD + "slo: [unclosed\n", Workload)
    assert exc.value.line is not None and "not valid YAML" in exc.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml", Workload)


def test_the_built_in_prices_are_valid() -> None:
    p = load_yaml(DEFAULT_PRICES, Prices)
    assert p.edge.assumed is not None and p.cloud.assumed is not None


def test_an_unknown_detector_is_refused() -> None:
    text = GOOD + "compliance:\n  detect: [email, horoscope]\n"
    with pytest.raises(InputError) as exc:
        parse_yaml(text, Workload)
    assert exc.value.field == "compliance.detect.1" and exc.value.line == 9
