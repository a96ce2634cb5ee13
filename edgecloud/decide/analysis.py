"""The whole decision in one call: options, choice, reasons, break-even, flips, tornado."""

from __future__ import annotations

from pydantic import BaseModel

from edgecloud.decide.decision import (
    LABEL,
    DecisionInputs,
    OptionResult,
    Reason,
    _money,
    _pct,
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
from edgecloud.decide.sizing import VisionSizing, size_vision
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
    vision: VisionSizing | None = None  # the edge sized for the screenshots (image workloads)


def decide(inputs: DecisionInputs) -> Decision:
    """Evaluate every option, choose one and explain it, with its sensitivity."""
    options = evaluate_options(inputs)
    chosen = choose(options)
    be = break_even_volume(inputs)
    reasons = explain(inputs, options, chosen, be)
    effect = pseudonymization_effect(inputs, options, chosen)
    if effect is not None:
        reasons.append(Reason(rank=len(reasons) + 1, kind="compliance", favours="cloud",
                              text=effect))
    return Decision(
        recommended=chosen,
        meets_all_checks=chosen is not None and options[chosen].feasible,
        reasons=reasons,
        options=options,
        break_even_requests_per_day=be,
        flips=flip_volumes(inputs),
        tornado=tornado(inputs, chosen) if chosen is not None else [],
        cost_curve=cost_per_1k_curve(inputs),
        inputs=inputs,
        vision=vision_sizing(inputs),
    )


def vision_sizing(inputs: DecisionInputs) -> VisionSizing | None:
    """Boxes for the workload's screenshots, when it has some and the edge bench measured them."""
    w, edge = inputs.workload, inputs.edge
    if w.images is None or edge.images is None or edge.capacity_rps is None:
        return None
    return size_vision(
        images_per_request=edge.images.images_per_request,
        image_ms=edge.images.image_ms,
        first_token_ms=edge.images.first_token_ms,
        requests_per_s_per_box=edge.capacity_rps,
        requests_per_day=w.requests_per_day,
        peak_to_average=w.peak_to_average,
        screenshot_share=w.images.share,
        headroom=w.capacity_headroom,
        source=edge.source,
    )


def pseudonymization_effect(
    inputs: DecisionInputs, options: dict[Option, OptionResult], chosen: Option | None
) -> str | None:
    """What the gateway's pseudonymisation changes: the share of requests it lets go to the
    cloud, and the recommended option's cost with it against the best option without it."""
    c = inputs.workload.compliance
    moved = c.personal_data_share * c.pseudonymizable_share
    if not (c.strict and c.pseudonymize and moved > 0):
        return None
    w = inputs.workload
    plain = inputs.model_copy(update={"workload": w.model_copy(update={
        "compliance": c.model_copy(update={"pseudonymize": []})})})
    before = evaluate_options(plain)
    before_choice = choose(before)
    cur = inputs.prices.currency
    head = (f"pseudonymisation ({', '.join(c.pseudonymize)}) lets {_pct(moved)} of requests "
            "go to the cloud as surrogates when the edge cannot take them")
    if chosen is None or before_choice is None:
        return head
    mine, theirs = options[chosen].cost.tco, before[before_choice].cost.tco
    return (f"{head}: {LABEL[chosen]} costs {_money(mine, cur)}, against "
            f"{_money(theirs, cur)} for {LABEL[before_choice]} without it "
            f"({_money(mine - theirs, cur)})")
