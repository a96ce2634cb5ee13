"""The demo's one HTML report: placement timeline, latency per tier, guarantees, bench, decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from edgecloud.demo.types import DemoOptions, DemoResult
from edgecloud.html_report import Section, escape, figure_svg, new_figure, render_page, table_html

LANES = {"edge": 2, "cloud": 1, "refused": 0, "error": 0}
COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def _timeline(result: DemoResult) -> str:
    fig, ax = new_figure(9.0, 3.4)
    reasons = sorted({o.reason for o in result.outcomes})
    for i, reason in enumerate(reasons):
        pts = [o for o in result.outcomes if o.reason == reason]
        ax.scatter(
            [o.sent_at_s for o in pts],
            [LANES.get(o.placement, 0) for o in pts],
            s=[max(12.0, min(120.0, o.e2e_ms / 20)) for o in pts],
            color=COLORS[i % len(COLORS)],
            label=reason,
            alpha=0.8,
        )
    ax.set_yticks([0, 1, 2], ["refused", "cloud", "edge"])
    ax.set_ylim(-0.6, 2.6)
    ax.set_xlabel("seconds since the demo started (marker size: latency)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return figure_svg(fig)


def _latency(result: DemoResult) -> str:
    fig, ax = new_figure(6.0, 3.4)
    data, labels = [], []
    for tier in ("edge", "cloud"):
        vals = [o.e2e_ms for o in result.outcomes if o.placement == tier and o.status == 200]
        if vals:
            data.append(vals)
            labels.append(f"{tier} (n={len(vals)})")
    if data:
        ax.boxplot(data, tick_labels=labels)
    ax.set_ylabel("end-to-end latency, ms")
    return figure_svg(fig)


def _bench_rows(path: str) -> list[list[Any]]:
    doc = orjson.loads(Path(path).read_bytes())
    rows = []
    for lv in doc.get("levels", []):
        rows.append(
            [
                doc.get("label", ""),
                lv.get("level"),
                lv.get("requests_per_s"),
                lv.get("output_tokens_per_s"),
                (lv.get("ttft_ms") or {}).get("p50"),
                (lv.get("e2e_ms") or {}).get("p95"),
            ]
        )
    return rows


def _decision_section(files: dict[str, str]) -> Section | None:
    path = files.get("decision_json")
    if not path or not Path(path).exists():
        return None
    doc = orjson.loads(Path(path).read_bytes())
    from edgecloud.demo.decision_view import decision_figures, decision_summary_html

    body = decision_summary_html(doc)
    link = files.get("decision_html")
    if link:
        body += f'<p>Full decision report: <a href="{escape(Path(link).name)}">'
        body += f"{escape(Path(link).name)}</a></p>"
    return Section(
        "The decision: where to run, and the three-year TCO", body, figures=decision_figures(doc)
    )


def _screenshot_section(result: DemoResult) -> Section:
    """The phone agent's screenshot step: read on the edge, by the node's projector."""
    shot = result.guarantees["screenshot"]
    rows = [
        [
            o.placement,
            o.endpoint,
            o.status,
            "-" if o.prompt_tokens is None else o.prompt_tokens,
            "-" if o.ttft_ms is None else round(o.ttft_ms),
            round(o.e2e_ms),
            o.text[:60] or o.error[:60],
        ]
        for o in result.outcomes
        if o.kind == "screenshot"
    ]
    return Section(
        "The screenshot step, on the edge",
        table_html(
            ["placement", "endpoint", "status", "prompt tokens", "TTFT ms", "e2e ms", "answer"],
            rows,
        ),
        note=f"The edge node reads the phone screenshot through its vision projector "
        f"({shot.get('projector') or 'none'}: random weights, made at demo start, "
        "so the answer is nonsense; decode, resize, encode, embed and generate are real). "
        "The prompt tokens include the image's. The byte scan also looks for slices of the "
        "screenshot's bytes on the cloud link.",
    )


def write_report(opts: DemoOptions, result: DemoResult) -> Path:
    g = result.guarantees
    ok = g["private_placed_in_cloud"] == 0 and g["cloud_link_private_marker_hits"] == 0
    guarantee_rows = [
        ["private requests sent", g["private_requests"]],
        ["private requests placed in the cloud", g["private_placed_in_cloud"]],
        ["private requests sent to the cloud as surrogates (edge down)",
         g["private_sent_as_surrogates"]],
        ["private markers seen on the cloud link (byte scan)", g["cloud_link_private_marker_hits"]],
        ["bytes that crossed the cloud link", g["cloud_link_bytes"]],
    ]
    shot = g.get("screenshot")
    if shot:
        guarantee_rows.insert(
            2,
            [
                "screenshot requests served on the edge (images: edge_only)",
                f"{shot['served_on_edge']} of {shot['requests']}",
            ],
        )
    reason_rows = [[r["placement"], r["reason"], r["count"]] for r in g["by_reason"]]
    lat_rows = [
        [tier, v["count"], v["p50"], v["p95"], v["ttft_p50"]] for tier, v in g["latency_ms"].items()
    ]
    req_rows = [
        [
            i + 1,
            o.phase,
            o.kind,
            "yes" if o.private else "",
            o.placement,
            o.endpoint,
            o.reason,
            o.status,
            round(o.e2e_ms),
            o.error[:80],
        ]
        for i, o in enumerate(result.outcomes)
    ]
    sections = [
        *([_screenshot_section(result)] if shot else []),
        Section(
            "Guarantees, measured",
            f'<p class="tag {"good" if ok else "bad"}">'
            f"{'held' if ok else 'VIOLATED'}</p>" + table_html(["check", "value"], guarantee_rows),
            note="The byte scan reads every byte the gateway sent over the emulated cloud link "
            "and looks for the personal data the demo injected.",
        ),
        Section(
            "Where requests ran, and why",
            table_html(["placement", "reason", "requests"], reason_rows),
            figures=[_timeline(result), _latency(result)],
            captions=["placement timeline", "latency per tier"],
        ),
        Section(
            "Latency per tier (ms)",
            table_html(["tier", "requests", "e2e p50", "e2e p95", "TTFT p50"], lat_rows),
            note=f"The cloud tier is reached over an {opts.link.describe()}.",
        ),
    ]
    bench_rows: list[list[Any]] = []
    for key in ("bench_edge", "bench_cloud"):
        if key in result.files:
            bench_rows += _bench_rows(result.files[key])
    if bench_rows:
        sections.append(
            Section(
                "Bench: both tiers, briefly",
                table_html(
                    ["tier", "concurrency", "req/s", "output tok/s", "TTFT p50 ms", "e2e p95 ms"],
                    bench_rows,
                ),
            )
        )
    decision = _decision_section(result.files)
    if decision is not None:
        sections.append(decision)
    sections.append(
        Section(
            "Every request",
            table_html(
                [
                    "#",
                    "phase",
                    "kind",
                    "private",
                    "placed",
                    "endpoint",
                    "reason",
                    "status",
                    "ms",
                    "error",
                ],
                req_rows,
            ),
        )
    )
    html = render_page("edgecloud demo", sections, subtitle=opts.link.describe())
    path = opts.out_dir / "demo-report.html"
    path.write_text(html)
    return path
