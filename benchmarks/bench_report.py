"""Render the README's performance tables from the latest benchmark results.

Each benchmark writes benchmarks/results/NAME.json; this replaces the README's block between
`<!-- bench-report:NAME -->` and `<!-- /bench-report:NAME -->` with the table rendered from that
file (edgecloud/testing/figures_tables.py), so that no figure in them is typed by hand.

    python benchmarks/bench_report.py [--check]     (make bench-report)

--check changes nothing and exits 1 when the README differs from what the results give.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecloud.testing.figures import load_results, marked_names, replace_marked  # noqa: E402
from edgecloud.testing.figures_tables import render_all  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--check", action="store_true", help="report differences, write nothing")
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    tables = render_all(load_results(args.results))
    new, left = replace_marked(text, tables)
    for name in left:
        print(f"{name}: no result in {args.results.name}/ (run the command its block names); "
              "block left as it is", file=sys.stderr)
    unused = sorted(set(tables) - set(marked_names(text)))
    for name in unused:
        print(f"{name}: a result without a README block (add the markers to show it)",
              file=sys.stderr)
    if args.check:
        if new != text:
            print(f"{args.readme.name} differs from the results: run make bench-report",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
    print(f"{len(tables) - len(unused)} table(s) rendered into {args.readme.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
