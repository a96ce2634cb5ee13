"""Values: defaults, the shipped default file, and errors that name the field and the line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecloud.deploy.errors import ValuesError
from edgecloud.deploy.values import DEFAULT_VALUES_FILE, Values, load_values, parse_values
from edgecloud.deploy.workloads import default_gateway_config, gateway_config_text, with_state
from edgecloud.gateway.config import DEFAULT_DETECT, parse_config


def test_shipped_default_file_equals_the_model_defaults() -> None:
    assert load_values(DEFAULT_VALUES_FILE) == Values()
    assert yaml.safe_load(DEFAULT_VALUES_FILE.read_text()) == Values().model_dump(mode="json")


def test_a_partial_file_is_laid_over_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "v.yaml"
    f.write_text("node:\n  autoscaling:\n    max_replicas: 30\n    mode: hpa\n")
    v = load_values(f)
    assert v.node.autoscaling.max_replicas == 30
    assert v.node.autoscaling.mode == "hpa"
    assert v.node.autoscaling.min_replicas == Values().node.autoscaling.min_replicas


def test_an_error_names_the_field_and_the_line() -> None:
    text = "namespace: edge\nnode:\n  parallel: 4\n  autoscaling:\n    min_replicas: zero\n"
    with pytest.raises(ValuesError) as exc:
        parse_values(text, "v.yaml")
    assert "v.yaml:5" in str(exc.value)
    assert "node.autoscaling.min_replicas" in str(exc.value)


def test_unknown_keys_and_crossed_bounds_are_refused() -> None:
    with pytest.raises(ValuesError, match="v.yaml:2: gateway.replica"):
        parse_values("gateway:\n  replica: 3\n", "v.yaml")
    with pytest.raises(ValuesError, match="max_replicas must be >= min_replicas"):
        parse_values("node:\n  autoscaling: {min_replicas: 5, max_replicas: 2}\n")
    with pytest.raises(ValuesError, match="pods_per_period, percent_per_period"):
        parse_values("node:\n  autoscaling:\n    scale_up:\n      pods_per_period: null\n"
                     "      percent_per_period: null\n")


def test_unreadable_and_non_mapping_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValuesError, match="missing.yaml: file not found"):
        load_values(tmp_path / "missing.yaml")
    with pytest.raises(ValuesError, match="expected a mapping"):
        parse_values("- a\n- b\n")
    with pytest.raises(ValuesError, match="not valid YAML"):
        parse_values("a: [\n")


def test_the_rendered_gateway_config_loads_back_as_built() -> None:
    for values in (Values(), parse_values("node: {port: 9000, autoscaling: {max_replicas: 4}}")):
        built = with_state(values, default_gateway_config(values))
        assert parse_config(gateway_config_text(values), "gateway.yaml") == built
        assert built.state.backend == "redis"  # replicas share limits and the budget
        assert built.policy.privacy.detect == list(DEFAULT_DETECT)
    given = "gateway:\n  config:\n    endpoints: [{name: hosted, tier: cloud, url: 'https://x/v1'}]\n"
    values = parse_values(given)
    assert parse_config(gateway_config_text(values)) == with_state(values, values.gateway.config)


def test_a_gateway_config_the_gateway_would_refuse_is_refused_at_its_line() -> None:
    text = (
        "node: {enabled: false}\n"
        "gateway:\n"
        "  config:\n"
        "    endpoints:\n"
        "      - {name: hosted, tier: sky, url: 'https://x/v1'}\n"
    )
    with pytest.raises(ValuesError) as exc:
        parse_values(text, "v.yaml")
    assert str(exc.value).startswith("v.yaml:5: gateway.config.endpoints.0.tier: "), exc.value
