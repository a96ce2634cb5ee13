"""HTML reports of bench results (one run, or several side by side) on edgecloud.html_report."""

from __future__ import annotations

import math
from collections.abc import Sequence

from edgecloud.bench.results import BenchResults, LevelSummary
from edgecloud.html_report import (
    Section,
    escape,
    figure_svg,
    human_number,
    new_figure,
    render_page,
    table_html,
)

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _nan(values: Sequence[float | None]) -> list[float]:
    """None (no data at that level) as NaN, which matplotlib leaves as a gap."""
    return [math.nan if v is None else v for v in values]


def load_axis_name(results: BenchResults) -> str:
    return {"rate": "offered requests/s", "burst": "burst size"}.get(
        results.scenario, "concurrency"
    )


def level_rows(levels: Sequence[LevelSummary]) -> list[list[object]]:
    """One row per level: the figures of the summary table (shared by HTML and terminal)."""
    rows: list[list[object]] = []
    for s in levels:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "0"
        rows.append(
            [
                s.level,
                s.requests,
                errors,
                s.requests_per_s,
                s.output_tokens_per_s,
                s.ttft_ms.p50,
                s.ttft_ms.p95,
                s.e2e_ms.p50,
                s.e2e_ms.p95,
                s.e2e_ms.p99,
                s.itl_ms.p50,
                s.tpot_ms.p50,
                None if s.goodput_share is None else round(100 * s.goodput_share, 1),
                None if s.client_cpu_share is None else round(100 * s.client_cpu_share, 1),
            ]
        )
    return rows


LEVEL_HEADERS = [
    "level",
    "requests",
    "errors",
    "req/s",
    "out tok/s",
    "TTFT p50",
    "TTFT p95",
    "e2e p50",
    "e2e p95",
    "e2e p99",
    "ITL p50",
    "TPOT p50",
    "goodput %",
    "bench CPU %",
]


def _cdf_figure(runs: Sequence[BenchResults]) -> str:
    fig, ax = new_figure()
    k = 0
    for run in runs:
        for level in sorted({r.level for r in run.records}):
            values = sorted(
                r.e2e_ms for r in run.records if r.ok and r.level == level and r.e2e_ms is not None
            )
            if not values:
                continue
            n = len(values)
            name = f"{run.label or run.endpoint} @ {level:g}" if len(runs) > 1 else f"{level:g}"
            ax.step(
                values,
                [(i + 1) / n for i in range(n)],
                where="post",
                label=name,
                color=_COLORS[k % len(_COLORS)],
            )
            k += 1
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("share of requests")
    ax.set_title("Latency CDF")
    if k:
        ax.legend(fontsize=7, title=None if len(runs) > 1 else load_axis_name(runs[0]))
    return figure_svg(fig, title="Latency CDF")


def _load_figure(runs: Sequence[BenchResults]) -> str:
    fig, ax = new_figure()
    ax2 = ax.twinx()
    for i, run in enumerate(runs):
        color = _COLORS[i % len(_COLORS)]
        xs = [s.level for s in run.levels]
        tokens = any(s.output_tokens_per_s > 0 for s in run.levels)
        ys = [s.output_tokens_per_s if tokens else s.requests_per_s for s in run.levels]
        p95 = _nan([s.e2e_ms.p95 for s in run.levels])
        name = run.label or run.endpoint
        ax.plot(xs, ys, marker="o", color=color, label=f"{name} throughput")
        ax2.plot(xs, p95, marker="s", linestyle="--", color=color, alpha=0.6, label=f"{name} p95")
        if run.knee is not None:
            ky = run.knee.output_tokens_per_s if tokens else run.knee.requests_per_s
            ax.scatter(
                [run.knee.level],
                [ky],
                s=180,
                facecolors="none",
                edgecolors="black",
                linewidths=2,
                zorder=5,
            )
            ax.annotate(
                f"knee ({run.knee.reason})",
                (run.knee.level, ky),
                textcoords="offset points",
                xytext=(6, -14),
                fontsize=8,
            )
    ax.set_xlabel(load_axis_name(runs[0]))
    ax.set_ylabel("output tokens/s (or requests/s)")
    ax2.set_ylabel("e2e p95 (ms), dashed")
    ax.set_title("Throughput and p95 vs load")
    ax.legend(fontsize=7, loc="upper left")
    return figure_svg(fig, title="Throughput and p95 vs load")


def _ttft_figure(runs: Sequence[BenchResults]) -> str:
    fig, ax = new_figure()
    for i, run in enumerate(runs):
        color = _COLORS[i % len(_COLORS)]
        xs = [s.level for s in run.levels]
        name = run.label or run.endpoint
        ax.plot(
            xs,
            _nan([s.ttft_ms.p50 for s in run.levels]),
            marker="o",
            color=color,
            label=f"{name} p50",
        )
        ax.plot(
            xs,
            _nan([s.ttft_ms.p95 for s in run.levels]),
            marker="^",
            linestyle=":",
            color=color,
            label=f"{name} p95",
        )
    ax.set_xlabel(load_axis_name(runs[0]))
    ax.set_ylabel("time to first token (ms)")
    ax.set_title("TTFT vs load")
    ax.legend(fontsize=7)
    return figure_svg(fig, title="TTFT vs load")


def _resource_figure(run: BenchResults) -> str | None:
    if not run.resources:
        return None
    fig, ax = new_figure()
    t = [s.get("t_s", 0.0) for s in run.resources]
    for key, color in (
        ("system_cpu_pct", "#555555"),
        ("server_cpu_pct", "#d62728"),
        ("client_cpu_pct", "#1f77b4"),
        ("gpu_util_pct", "#2ca02c"),
    ):
        if any(key in s for s in run.resources):
            ax.plot(t, _nan([s.get(key) for s in run.resources]), label=key, color=color)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("CPU % (100 = one busy core)")
    ax.set_title("Resources during the run")
    ax.legend(fontsize=7)
    return figure_svg(fig, title="Resource timeline")


def render_run(run: BenchResults) -> str:
    """The HTML report of one run."""
    meta = table_html(
        [],
        [
            ["endpoint", run.endpoint],
            ["model", run.model],
            ["label", run.label or None],
            ["scenario", run.scenario],
            ["workload", run.workload],
            ["token counts from", run.token_count_source],
            ["streaming", run.stream],
            ["SLO", ", ".join(f"{k} <= {v:g}" for k, v in run.slo.items()) or None],
            ["complete", run.complete],
            ["started", run.started_at],
            ["machine", ", ".join(f"{k} {v}" for k, v in run.machine.items())],
        ],
    )
    note = f'<p class="tag warn">{escape(run.note)}</p>' if run.note else ""
    sections = [Section("Run", note + meta)]
    if run.levels:
        knee = ""
        if run.knee is not None:
            knee = (
                f"<p>Knee: <b>{run.knee.level:g}</b> ({escape(run.knee.reason)}), "
                f"{run.knee.requests_per_s:.3g} req/s, "
                f"{run.knee.output_tokens_per_s:.3g} output tokens/s.</p>"
            )
        sections.append(
            Section(
                "Per level (ms)",
                knee
                + (f"<p>{escape(image_line(run))}.</p>" if run.images is not None else "")
                + table_html(LEVEL_HEADERS, level_rows(run.levels)),
                note="Latency counts from the scheduled time in open loop "
                "(no coordinated omission).",
            )
        )
        figs = [_cdf_figure([run]), _load_figure([run]), _ttft_figure([run])]
        res = _resource_figure(run)
        if res:
            figs.append(res)
        sections.append(Section("Plots", figures=figs))
    if run.cold_start is not None:
        rows = [[k, p.count, p.p50, p.min, p.max] for k, p in run.cold_start.summary.items()]
        sections.append(
            Section(
                "Cold start (ms from launch)",
                table_html(["part", "runs", "p50", "min", "max"], rows),
                note=f"command: {run.cold_start.command}",
            )
        )
    if run.energy is not None:
        e = run.energy
        sections.append(
            Section(
                "Energy",
                table_html(
                    ["source", "measured", "joules", "J/request", "tokens/J"],
                    [[e.source, e.measured, e.joules, e.joules_per_request, e.tokens_per_joule]],
                ),
                note=e.note,
            )
        )
    return render_page(
        f"edgecloud bench: {run.label or run.endpoint}",
        sections,
        subtitle=f"{run.scenario} / {run.workload} / {run.model}",
    )


def compare_rows(runs: Sequence[BenchResults]) -> list[list[object]]:
    """One row per run for `bench compare`."""
    rows: list[list[object]] = []
    for run in runs:
        best = max(run.levels, key=lambda s: s.output_tokens_per_s, default=None)
        low = run.levels[0] if run.levels else None
        rows.append(
            [
                run.label or run.endpoint,
                run.model,
                run.scenario,
                None if run.knee is None else f"{run.knee.level:g} ({run.knee.reason})",
                None if best is None else best.output_tokens_per_s,
                None if best is None else best.requests_per_s,
                None if low is None else low.ttft_ms.p50,
                None if low is None else low.e2e_ms.p50,
                None if low is None else low.e2e_ms.p95,
                None if run.energy is None else run.energy.joules_per_request,
                None if run.energy is None else run.energy.source,
            ]
        )
    return rows


COMPARE_HEADERS = [
    "run",
    "model",
    "scenario",
    "knee",
    "best out tok/s",
    "best req/s",
    "TTFT p50 (lowest)",
    "e2e p50 (lowest)",
    "e2e p95 (lowest)",
    "J/request",
    "energy source",
]


def render_compare(runs: Sequence[BenchResults]) -> str:
    """Several runs side by side (e.g. edge vs cloud)."""
    sections = [
        Section(
            "Runs",
            table_html(COMPARE_HEADERS, compare_rows(runs)),
            note="'lowest' = the lowest load level of each run.",
        ),
        Section("Plots", figures=[_load_figure(runs), _ttft_figure(runs), _cdf_figure(runs)]),
    ]
    for run in runs:
        sections.append(
            Section(
                f"{run.label or run.endpoint}: per level (ms)",
                table_html(LEVEL_HEADERS, level_rows(run.levels)),
            )
        )
    return render_page(
        "edgecloud bench compare",
        sections,
        subtitle=" vs ".join(r.label or r.endpoint for r in runs),
    )


def image_line(results: BenchResults) -> str:
    """What the requests' images were, and the image time the server reported per level."""
    im = results.images
    assert im is not None
    head = (
        f"images: {im.per_request:g} per request, {im.width}x{im.height} {im.format.upper()}, "
        f"{_fmt_num(im.mean_bytes / 1e6)} MB mean"
    )
    if im.image_time_source == "none":
        return head + "; the server reports no image time (end-to-end figures only)"
    per = ", ".join(
        f"{lv.level:g}: {_fmt_num(lv.image_ms)} ms"
        for lv in results.levels
        if lv.image_ms is not None
    )
    return head + f"; server image time (encode + image prefill) per image by level: {per}"


def _fmt_num(v: float | None) -> str:
    return "-" if v is None else human_number(v)
