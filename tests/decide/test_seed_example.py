"""The seed's case shipped in examples/decide reproduces its figures and its rule of thumb."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.decide.decision import DecisionInputs, choose, evaluate_options
from edgecloud.decide.inputs import Workload
from edgecloud.decide.loading import load_inputs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "decide"


def _seed() -> DecisionInputs:
    return load_inputs(
        EXAMPLES / "workload.yaml",
        EXAMPLES / "prices.yaml",
        [str(EXAMPLES / "bench-edge.json"), str(EXAMPLES / "bench-cloud.json")],
    )


def _with(i: DecisionInputs, **update: object) -> DecisionInputs:
    data = i.workload.model_dump()
    for key, value in update.items():
        *path, last = key.split("__")
        cur = data
        for part in path:
            cur = cur[part]
        cur[last] = value
    return i.model_copy(update={"workload": Workload.model_validate(data)})


def test_three_year_tco_near_420k_cloud_and_350k_edge() -> None:
    opts = evaluate_options(_seed())
    assert opts["cloud"].cost.tco == pytest.approx(420_000, rel=0.03)
    assert opts["edge"].cost.tco == pytest.approx(350_000, rel=0.03)
    assert opts["edge"].cost.months == 36


def test_high_volume_and_strict_compliance_choose_the_edge() -> None:
    i = _seed()
    opts = evaluate_options(i)
    assert choose(opts) == "edge"
    assert not opts["cloud"].check("compliance").passed
    # Edge is also the cheaper one: volume alone would choose it.
    assert choose(evaluate_options(_with(i, compliance__personal_data_share=0.0))) == "edge"


def test_temporary_or_global_access_choose_the_cloud() -> None:
    public = _with(_seed(), compliance__personal_data_share=0.0)
    assert choose(evaluate_options(_with(public, duration_months=6))) == "cloud"
    regions = {"eu": 0.5, "us": 0.3, "apac": 0.2}
    assert choose(evaluate_options(_with(public, users__regions=regions))) == "cloud"


def test_low_volume_without_personal_data_chooses_the_cloud() -> None:
    public = _with(_seed(), compliance__personal_data_share=0.0, requests_per_day=50_000)
    assert choose(evaluate_options(public)) == "cloud"
