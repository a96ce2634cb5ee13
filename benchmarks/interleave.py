"""Run two servers side by side on a shared machine: alternate them level by level, keep medians.

Both servers stay up (an idle server costs nothing), so a burst of load from elsewhere on a
shared machine hits both alike instead of whichever happened to run at that moment.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecloud.supervise import ManagedProcess  # noqa: E402
from edgecloud.testing.figures import write_result  # noqa: E402

Level = Callable[[str, str, int, int], dict[str, float]]  # (name, base URL, concurrency, round)


Runs = dict[str, dict[int, list[dict[str, float]]]]  # server -> level -> one dict per round


def measure_interleaved(
    servers: dict[str, str],
    rounds: int,
    level: Level,
    levels: tuple[int, ...] = (1, 4),
    runs: Runs | None = None,
) -> dict[str, dict[int, dict[str, float]]]:
    """`level(name, base, concurrency, round)` for every server, level and round, alternating
    the order each round; the median of each metric per server and level. Every round's
    figures go into `runs` when one is given (the raw samples of the result file)."""
    runs = runs if runs is not None else {}
    runs.update({n: {c: [] for c in levels} for n in servers})
    names = list(servers)
    for r in range(rounds):
        for conc in levels:
            for name in names if r % 2 == 0 else list(reversed(names)):
                res = level(name, servers[name], conc, r)
                runs[name][conc].append(res)
                print(
                    f"  round {r + 1} {name:>12} c={conc}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in res.items()),
                    flush=True,
                )
    return {
        name: {
            conc: {k: float(np.median([x[k] for x in rs])) for k in rs[0]}
            for conc, rs in by_level.items()
        }
        for name, by_level in runs.items()
    }


@contextlib.contextmanager
def servers_up(
    peer: tuple[list[str], str],
    ours: tuple[list[str], str],
    logdir: Path,
    prefix: str,
    timeout_s: float = 300,
) -> Iterator[None]:
    """Start the peer and edgecloud (command, readiness URL) with logs under `logdir`; wait for
    both, stop both after."""
    with (
        ManagedProcess(peer[0], peer[1], log_path=str(logdir / f"{prefix}-peer.log"),
                       name="peer") as peer_proc,
        ManagedProcess(ours[0], ours[1], log_path=str(logdir / f"{prefix}-ours.log"),
                       name="edgecloud") as ours_proc,
    ):  # fmt: skip
        peer_proc.wait_ready(timeout_s)
        ours_proc.wait_ready(timeout_s)
        yield


def record_side_by_side(
    name: str,
    peer: str,
    medians: dict[str, dict[int, dict[str, float]]],
    runs: Runs,
    keys: tuple[str, ...],
    params: dict[str, object],
) -> None:
    """The result file of a side-by-side benchmark: medians per level, every round's figures."""
    summary = {"peer": peer, "ours": "edgecloud", "keys": list(keys), "medians": medians}
    write_result(name, summary=summary, samples={"rounds_per_level": runs}, params=params)


def print_ratios(
    peer_name: str,
    peer: dict[int, dict[str, float]],
    ours: dict[int, dict[str, float]],
    keys: tuple[str, ...],
) -> None:
    """One line per level and metric: the peer's value, ours, and ours / peer."""
    print(f"{'concurrency':>11} | {'metric':>13} | {peer_name:>12} | {'edgecloud':>9} | ratio")
    for conc in sorted(peer):
        for key in keys:
            p, o = peer[conc][key], ours[conc][key]
            ratio = o / p if p else float("nan")
            note = "  (lower is better)" if key.startswith("ttft") else ""
            print(f"{conc:>11} | {key:>13} | {p:12.4g} | {o:9.4g} | {ratio:.2f}x{note}")
