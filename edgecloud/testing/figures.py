"""Where the README's performance figures come from: one result file per benchmark, and the
tables rendered from it.

Every benchmark ends with `write_result`: one JSON document with the machine, the date, the git
commit, the command, the parameters, the summary figures and the raw samples, written to
`benchmarks/results/NAME.json` (the latest run; git keeps the earlier ones). `make bench-report`
(`benchmarks/bench_report.py`) renders each result's table into the README between the markers
`<!-- bench-report:NAME -->` and `<!-- /bench-report:NAME -->`, so that no figure is typed by
hand. The renderers (`figures_tables.py`) are pure: a result document in, Markdown out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = "results"  # beside the benchmark scripts
SAMPLE_CAP = 1001  # raw values kept per series in a result file (see sample_digest)


def benchmark_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring, as written, is its --help."""
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def machine() -> dict[str, Any]:
    """What the figures were measured on: the bench's machine record without the host name (a
    result file is published), and the load when the run began."""
    from edgecloud.bench.resources import machine_info

    info: dict[str, Any] = {k: v for k, v in machine_info().items() if k != "hostname"}
    info["load_1m_at_start"] = round(os.getloadavg()[0], 2)
    return info


def git_commit(repo: Path) -> dict[str, Any]:
    """The commit the benchmark ran from, and whether the tree had uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=10, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    return {"sha": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def result_document(name: str, *, summary: dict[str, Any], samples: Any,
                    params: dict[str, Any], command: str, repo: Path) -> dict[str, Any]:
    """The JSON document one benchmark run leaves behind."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "benchmark": name,
        "command": command,
        "date": now.replace(microsecond=0).isoformat(),
        "git": git_commit(repo),
        "machine": machine(),
        "params": params,
        "summary": summary,
        "samples": samples,
    }


def write_result(name: str, *, summary: dict[str, Any], samples: Any,
                 params: dict[str, Any] | None = None, out_dir: Path | None = None) -> Path:
    """Write `results/NAME.json` beside the running benchmark script (or into `out_dir`) and
    return its path. `summary` holds the figures the README shows; `samples` the raw ones."""
    script = Path(sys.argv[0]).resolve()
    out_dir = out_dir or script.parent / RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", f"benchmarks/{script.name}", *sys.argv[1:]])
    doc = result_document(name, summary=summary, samples=samples, params=params or {},
                          command=command, repo=script.parent)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=_plain) + "\n", encoding="utf-8")
    print(f"result written to {path}", file=sys.stderr)
    return path


def sample_digest(values: Sequence[float], cap: int = SAMPLE_CAP) -> list[float] | dict[str, Any]:
    """One series of raw samples as a result file keeps it: up to `cap` values as they are;
    a longer one as its count, mean and exact median, and its sorted values at `cap` evenly
    spaced ranks (the minimum, the maximum and every quantile in steps of 1/(cap - 1), so a
    p50, p90 or p99 is read off at its rank), which keeps the file small."""
    if len(values) <= cap:
        return list(values)
    ordered = sorted(values)
    last = len(ordered) - 1
    return {"n": len(ordered), "mean": statistics.fmean(ordered),
            "median": statistics.median(ordered),
            "sorted_at_ranks": [ordered[round(i * last / (cap - 1))] for i in range(cap)]}


def digest_quantile(series: list[float] | dict[str, Any], q: float) -> float:
    """The `q` quantile (0..1, nearest rank) of a series that sample_digest kept."""
    ordered = series["sorted_at_ranks"] if isinstance(series, dict) else sorted(series)
    return float(ordered[round(q * (len(ordered) - 1))])


def _plain(value: object) -> object:
    """JSON for what json does not know: dataclass-like objects and paths."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dict__"):
        return vars(value)
    return str(value)


# -- the README side ---------------------------------------------------------------------------

_MARKER = re.compile(
    r"(<!-- bench-report:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench-report:(?P=name) -->)",
    re.DOTALL,
)


def marked_names(text: str) -> list[str]:
    """The benchmarks whose tables `text` holds between markers, in order."""
    return [m.group("name") for m in _MARKER.finditer(text)]


def replace_marked(text: str, tables: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with each marked block whose name is in `tables` replaced by that table; and the
    names of the marked blocks left as they were (no result to render them from)."""
    left: list[str] = []

    def swap(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in tables:
            left.append(name)
            return m.group(0)
        return m.group(1) + tables[name].rstrip("\n") + "\n" + m.group(4)

    return _MARKER.sub(swap, text), left


def provenance(doc: dict[str, Any]) -> str:
    """One line: the command, when, on what, from which commit."""
    m = doc.get("machine", {})
    git = doc.get("git", {})
    sha = (git.get("sha") or "unknown")[:10] + (" with local changes" if git.get("dirty") else "")
    cores = m.get("cores_logical", m.get("cores"))
    return (f"`{doc.get('command', '')}` — {str(doc.get('date', ''))[:10]}, {cores} "
            f"cores ({m.get('cpu', '?')}), load {m.get('load_1m_at_start', '?')} at start, "
            f"commit {sha}; raw samples in `benchmarks/results/{doc.get('benchmark')}.json`.")


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every result document in `results_dir`, by benchmark name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[str(doc.get("benchmark", path.stem))] = doc
    return out
