"""The whole decision in one call: options, choice, reasons, break-even, flips, tornado."""

from __future__ import annotations

from pydantic import BaseModel

from edgecloud.decide.decision import (
    DecisionInputs,
    OptionResult,
    Reason,
    choose,
    evaluate_options,
    explain,
)
from edgecloud.decide.sensitivity import (
    FlipPoint,
    TornadoBar,
    break_even_volume,
    cost_per_1k_curve,
    flip_volumes,
    tornado,
)
from edgecloud.decide.tco import Option


class Decision(BaseModel):
    """What `edgecloud decide` reports (and writes with --json)."""

    recommended: Option | None
    meets_all_checks: bool
    reasons: list[Reason]
    options: dict[Option, OptionResult]
    break_even_requests_per_day: float | None
    flips: list[FlipPoint]
    tornado: list[TornadoBar]
    cost_curve: dict[str, list[float]]
    inputs: DecisionInputs


def decide(inputs: DecisionInputs) -> Decision:
    """Evaluate every option, choose one and explain it, with its sensitivity."""
    options = evaluate_options(inputs)
    chosen = choose(options)
    be = break_even_volume(inputs)
    return Decision(
        recommended=chosen,
        meets_all_checks=chosen is not None and options[chosen].feasible,
        reasons=explain(inputs, options, chosen, be),
        options=options,
        break_even_requests_per_day=be,
        flips=flip_volumes(inputs),
        tornado=tornado(inputs, chosen) if chosen is not None else [],
        cost_curve=cost_per_1k_curve(inputs),
        inputs=inputs,
    )
