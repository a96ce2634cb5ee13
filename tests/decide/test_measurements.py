"""Reading bench results: the operating point at the SLO, the knee, refusing mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.decide.errors import BenchMismatch, InputError
from edgecloud.decide.loading import load_bench, load_inputs
from edgecloud.decide.measurements import check_comparable, from_bench, level_point, tier_of
from tests.decide.decide_samples import bench, level, workload

W = workload()


def test_capacity_comes_from_the_token_rate_and_the_workload_output_length() -> None:
    p = level_point(level(4, 150, 300, 27, out_tokens=50), W.tokens, W.slo)
    assert p.capacity_rps == pytest.approx(150 / 100)  # the workload asks for 100 tokens
    assert p.e2e_ms == pytest.approx(300 + 27 * 99)
    assert p.meets_slo


def test_operating_point_is_the_best_level_within_slo_and_knee() -> None:
    perf = from_bench("edge", bench(), W.tokens, W.slo, "e.json")
    assert perf.operating_level == 4  # level 8 misses nothing but lies past the knee
    assert perf.capacity_rps == pytest.approx(1.5)
    assert perf.ttft_ms == 300 and perf.meets_slo
    no_knee = from_bench("edge", bench(knee=None), W.tokens, W.slo, "e.json")
    assert no_knee.operating_level == 8


def test_a_level_over_the_slo_or_with_errors_does_not_count() -> None:
    strict = workload(slo={"ttft_ms": 200, "e2e_ms": 10_000})
    perf = from_bench("edge", bench(), strict.tokens, strict.slo, "e.json")
    assert perf.operating_level == 2
    failing = bench(levels=[level(1, 50, 100, 20, ok_share=0.9)])
    assert not from_bench("edge", failing, W.tokens, W.slo, "e.json").meets_slo


def test_tier_from_label_or_machine() -> None:
    assert tier_of(bench(label="Edge box 1")) == "edge"
    assert tier_of(bench(label="", machine={"tier": "cloud"})) == "cloud"
    assert tier_of(bench(label="mystery")) is None


def test_different_models_are_refused_with_a_reason() -> None:
    with pytest.raises(BenchMismatch, match="different models"):
        check_comparable({"a.json": bench(model="m1"), "b.json": bench(model="m2")})


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v2.json"
    data = json.loads(bench().model_dump_json())
    data["schema_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(BenchMismatch, match="schema version 2") as exc:
        load_bench(path)
    assert exc.value.field == "schema_version"


def test_bench_tiers_come_from_the_option_or_the_file(tmp_path: Path) -> None:
    wl = tmp_path / "w.yaml"
    wl.write_text(json.dumps(W.model_dump()))  # JSON is YAML
    e, c = tmp_path / "e.json", tmp_path / "c.json"
    e.write_text(bench(label="box").model_dump_json())
    c.write_text(bench(label="cloud run").model_dump_json())
    got = load_inputs(wl, None, [f"edge={e}", str(c)])
    assert got.edge.measured and got.cloud.measured
    with pytest.raises(InputError, match="which tier"):
        load_inputs(wl, None, [str(e)])
    with pytest.raises(InputError, match="second edge"):
        load_inputs(wl, None, [f"edge={e}", f"edge={c}"])
    other = tmp_path / "o.json"
    other.write_text(bench(label="cloud", model="other").model_dump_json())
    with pytest.raises(BenchMismatch, match="different models"):
        load_inputs(wl, None, [f"edge={e}", str(other)])
