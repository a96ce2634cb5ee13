"""Reading the inputs from files: YAML with line numbers for errors, bench JSON with checks.

This is the I/O edge of the package; everything it returns is validated pydantic data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgecloud.api.yamlconfig import load_model, parse_model
from edgecloud.bench.results import SCHEMA_VERSION, BenchResults
from edgecloud.decide.decision import DecisionInputs
from edgecloud.decide.errors import BenchMismatch, InputError
from edgecloud.decide.measurements import (
    Tier,
    TierPerformance,
    check_comparable,
    from_assumed,
    from_bench,
    tier_of,
)

M = TypeVar("M", bound=BaseModel)


def parse_yaml(text: str, model: type[M], file: str = "") -> M:
    """Validate YAML text against `model`; errors name the file, the field and its line."""
    return parse_model(text, model, file, error=InputError)


def load_yaml(path: str | Path, model: type[M]) -> M:
    """Read and validate one YAML input file."""
    return load_model(path, model, error=InputError)


def load_bench(path: str | Path) -> BenchResults:
    """Read one `edgecloud bench` results file, refusing other schema versions."""
    p = Path(path)
    try:
        raw: Any = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("bench file not found", file=str(p)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not a readable JSON bench file ({exc})", file=str(p)) from None
    if not isinstance(raw, dict):
        raise InputError("expected a JSON object (an edgecloud bench results file)", file=str(p))
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BenchMismatch(
            f"results schema version {version!r}, this edgecloud reads version "
            f"{SCHEMA_VERSION}: re-run `edgecloud bench` with this version",
            file=str(p),
            field="schema_version",
        )
    try:
        return BenchResults.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise InputError(err["msg"], file=str(p), field=field) from None


DEFAULT_PRICES = Path(__file__).with_name("default_prices.yaml")


def _split_spec(spec: str) -> tuple[Tier | None, str]:
    tier, sep, path = spec.partition("=")
    if sep and tier == "edge":
        return "edge", path
    if sep and tier == "cloud":
        return "cloud", path
    return None, spec


def load_inputs(
    workload_path: str | Path, prices_path: str | Path | None, bench_specs: list[str]
) -> DecisionInputs:
    """Read every input of a decision. `bench_specs` are `edge=FILE`, `cloud=FILE` or `FILE`
    (the tier then comes from the file's label or machine.tier)."""
    from edgecloud.decide.inputs import Prices, Workload

    workload = load_yaml(workload_path, Workload)
    prices = load_yaml(prices_path or DEFAULT_PRICES, Prices)
    benches: dict[str, BenchResults] = {}
    by_tier: dict[Tier, tuple[str, BenchResults]] = {}
    for spec in bench_specs:
        named, path = _split_spec(spec)
        bench = load_bench(path)
        tier = named or tier_of(bench)
        if tier is None:
            raise InputError(
                "cannot tell which tier this bench file measured: pass it as "
                f"--bench edge={path} or --bench cloud={path}",
                file=path,
            )
        if tier in by_tier:
            raise InputError(
                f"a second {tier} bench file (the first: {by_tier[tier][0]}); give one per tier",
                file=path,
            )
        by_tier[tier] = (path, bench)
        benches[path] = bench
    check_comparable(benches)
    perf: dict[Tier, TierPerformance] = {}
    tiers: tuple[Tier, ...] = ("edge", "cloud")
    for tier in tiers:
        if tier in by_tier:
            path, bench = by_tier[tier]
            perf[tier] = from_bench(tier, bench, workload.tokens, workload.slo, path)
            continue
        assumed = getattr(prices, tier).assumed
        if assumed is None:
            raise InputError(
                f"no {tier} bench file: give --bench {tier}=FILE or state "
                f"{tier}.assumed (capacity_rps, ttft_ms, e2e_ms) in the prices file",
                file=str(prices_path or DEFAULT_PRICES),
                field=f"{tier}.assumed",
            )
        perf[tier] = from_assumed(tier, assumed, workload.slo)
    return DecisionInputs(workload=workload, prices=prices, edge=perf["edge"], cloud=perf["cloud"])
