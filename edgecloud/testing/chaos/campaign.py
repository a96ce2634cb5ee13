"""The fault campaign: one fault at a time under mixed traffic, one row of figures per fault."""

from __future__ import annotations

import concurrent.futures
import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from edgecloud.testing.chaos import faults
from edgecloud.testing.chaos.checks import (
    RssMonitor,
    leaks,
    process_fds,
    process_rss_mb,
    stuck_states,
)
from edgecloud.testing.chaos.stack import MODEL, ChaosStack
from edgecloud.testing.chaos.traffic import CLOUD_EU, CLOUD_US, EDGE, MixedTraffic, send_one
from edgecloud.testing.faulty_link import Mode
from edgecloud.testing.polling import settle


class Skip(Exception):
    """This fault does not apply to the stack as configured."""


PARTS = (EDGE, CLOUD_EU, CLOUD_US, "gateway", "fleet", "agent")


@dataclass
class Row:
    fault: str
    sent: int = 0
    served: int = 0
    refused: int = 0
    failed: int = 0
    wrong: int = 0
    leaks: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    recover_s: float | None = None
    peak_rss_mb: float = 0.0
    peak_part: str = ""
    note: str = ""
    failures: list[str] = field(default_factory=list)  # a few failure details, for the log

    def cells(self) -> list[str]:
        rec = "-" if self.recover_s is None else f"{self.recover_s:.2f}"
        return [self.fault, str(self.sent), str(self.served), str(self.refused), str(self.failed),
                str(self.wrong), str(len(self.leaks)), str(len(self.stuck)), rec,
                f"{self.peak_rss_mb:.0f} {self.peak_part}", self.note]


HEADERS = ["fault", "sent", "served", "refused", "failed", "wrong", "leaks", "stuck",
           "recover s", "peak RSS MB", "note"]


def render(rows: list[Row]) -> str:
    table = [HEADERS, *[r.cells() for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- faults ---------------------------------------------------------------------------------------
# A fault is a context manager over the stack: entering injects it, the body is the window under
# traffic, leaving ends it (and puts back what it broke). It may return a note for its row.

Fault = Callable[[ChaosStack, float], contextlib.AbstractContextManager[list[str]]]


def _kill9(part: str) -> Fault:
    @contextlib.contextmanager
    def run(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
        faults.kill9(stack.parts[part].proc)
        note: list[str] = []
        yield note
        t0 = time.monotonic()
        stack.parts[part].restart()
        note.append(f"restart {time.monotonic() - t0:.1f}s")
    return run


def _sigstop(part: str) -> Fault:
    @contextlib.contextmanager
    def run(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
        with faults.frozen(stack.parts[part].proc):
            yield []
    return run


def _upstream(**control: Any) -> Fault:
    @contextlib.contextmanager
    def run(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
        stack.standin_control(**control)
        try:
            yield []
        finally:
            stack.standin_control(fail=None, hang_s=0, cut_after=None, chunks=8, delay_ms=0,
                                  fault=None)
    return run


@contextlib.contextmanager
def _fail_then_ok(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
    """The cloud answers 500 for the first half of the window, then 200."""
    stack.standin_control(fail=500)
    heal = threading.Timer(window_s / 2, stack.standin_control, kwargs={"fail": None})
    heal.start()
    try:
        yield [f"500 for {window_s / 2:.1f}s"]
    finally:
        heal.cancel()
        heal.join()
        stack.standin_control(fail=None)


def _private_body(stream: bool) -> bytes:
    return orjson.dumps({"model": MODEL, "max_tokens": 24, "stream": stream,
                         "messages": [{"role": "user", "content": "Count to ten slowly."}]})


@contextlib.contextmanager
def _disconnects(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
    """Clients that hang up at every phase, towards the edge (private) and the cloud stand-in
    (which holds each stream chunk 200 ms), through the gateway and straight at the edge node."""
    stack.standin_control(delay_ms=200)
    ports = {"gateway": stack.ports["gateway"], "edge": stack.ports[EDGE]}
    targets = [("gateway", {"x-edgecloud-sensitivity": "private"}),
               ("gateway", {"x-edgecloud-placement": "cloud"}), ("edge", {})]
    cases = [(where, headers, phase, stream) for where, headers in targets
             for phase in faults.DISCONNECT_PHASES
             for stream in ((False, True) if phase in ("full_body", "first_chunk") else (True,))]
    n = 0
    deadline = time.monotonic() + max(window_s * 4, 30.0)  # a bound, not a goal
    try:
        for where, headers, phase, stream in cases:
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(OSError):
                faults.disconnect_at(ports[where], phase, _private_body(stream), headers,
                                     timeout_s=10)
            n += 1
        yield [f"{n}/{len(cases)} hang-ups"]
    finally:
        stack.standin_control(delay_ms=0)


P99_MIN_SAMPLES = 200  # fewer, and the tail figure is the max, named as such


def slowloris_fault(count: int, samples: int = P99_MIN_SAMPLES) -> Fault:
    """`count` half-open connections at the gateway; the note compares the tail latency of
    `samples` normal requests before and while they are open: the p99 from 200 samples or more,
    else the max."""
    @contextlib.contextmanager
    def run(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
        base = latencies(stack, samples)
        with faults.slowloris(stack.ports["gateway"], count) as socks:
            loaded = latencies(stack, samples)
            yield [f"{len(socks)} open; {tail_note(base, loaded)}"]
    return run


def tail_note(base: list[float], loaded: list[float]) -> str:
    """`p99 of 200/200 934->516 ms (x0.6)`: the p99 when both sides have at least
    P99_MIN_SAMPLES samples, else the max, named as the max."""
    kind = "p99" if min(len(base), len(loaded)) >= P99_MIN_SAMPLES else "max"
    b, v = tail(base, kind), tail(loaded, kind)
    ratio = f" (x{v / b:.1f})" if b and v else ""
    return f"{kind} of {len(base)}/{len(loaded)} {_ms(b)}->{_ms(v)} ms{ratio}"


def tail(lat: list[float], kind: str) -> float | None:
    if not lat:
        return None
    return statistics.quantiles(lat, n=100)[98] if kind == "p99" else max(lat)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def latencies(stack: ChaosStack, n: int) -> list[float]:
    """Latencies of the served ones of `n` one-token public requests through the gateway."""
    import openai
    client = openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key="chaos", max_retries=0,
                           timeout=30)
    try:
        return [o.latency_s for o in (send_one(client, MODEL, "public", False, max_tokens=1)
                                      for _ in range(n)) if o.result == "served"]
    finally:
        client.close()


@contextlib.contextmanager
def _bodies(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
    """64 concurrent 2 MB bodies (every fourth private, so the edge node reads it), then one
    of 60 MB, at the gateway."""
    url = f"{stack.gateway}/v1/chat/completions"
    filler = "x" * (2 * 2**20)

    def post(text: str, private: bool = False) -> str:
        body = orjson.dumps({"model": MODEL, "max_tokens": 1,
                             "messages": [{"role": "user", "content": text}]})
        headers = {"content-type": "application/json"}
        if private:
            headers["x-edgecloud-sensitivity"] = "private"
        try:
            return str(httpx.post(url, content=body, timeout=60, headers=headers).status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        small = list(pool.map(post, [filler] * 64, [i % 4 == 0 for i in range(64)]))
    big = post("y" * (60 * 2**20))
    counts = {s: small.count(s) for s in sorted(set(small))}
    yield [f"2MB x64: {counts}; 60MB: {big}"]


def _fleet_link(mode: Mode) -> Fault:
    @contextlib.contextmanager
    def run(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
        assert stack.fleet_link is not None
        # Trickle: one byte a second, as a link that has all but died.
        stack.fleet_link.set(mode, **({"trickle_s": 1.0} if mode == "trickle" else {}))
        try:
            yield []
        finally:
            stack.fleet_link.set("pass")
    return run


def _fleet_db(kind: str) -> Fault:
    @contextlib.contextmanager
    def run(stack: ChaosStack, window_s: float) -> Iterator[list[str]]:
        if stack.postgres is not None:
            if kind != "pg_stopped":
                raise Skip("the fleet runs on PostgreSQL")
            cm = faults.postgres_stopped(stack.postgres)
        elif kind == "pg_stopped":
            raise Skip("the fleet runs on SQLite (--fleet-db postgres)")
        else:
            cm = (faults.sqlite_locked(stack.db_path) if kind == "locked"
                  else faults.sqlite_removed(stack.db_path))
        with cm:
            yield []
    return run


def all_faults() -> dict[str, Fault]:
    out: dict[str, Fault] = {}
    for part in PARTS:
        out[f"kill9:{part}"] = _kill9(part)
        out[f"sigstop:{part}"] = _sigstop(part)
    out["disconnects"] = _disconnects
    out["upstream:hang_after_headers"] = _upstream(fault="hang_after_headers")
    out["upstream:hang_mid_stream"] = _upstream(delay_ms=60_000)
    out["upstream:invalid_json"] = _upstream(fault="invalid_json")
    out["upstream:truncate_chunked"] = _upstream(fault="truncate_chunked")
    out["upstream:cut_mid_stream"] = _upstream(cut_after=2)
    out["upstream:500_then_200"] = _fail_then_ok
    out["slowloris:1000"] = slowloris_fault(1000)
    out["bodies:64x2MB+60MB"] = _bodies
    for mode in ("drop", "garble", "trickle"):
        out[f"fleet_link:{mode}"] = _fleet_link(mode)
    out["fleet_db:locked"] = _fleet_db("locked")
    out["fleet_db:removed"] = _fleet_db("removed")
    out["fleet_db:pg_stopped"] = _fleet_db("pg_stopped")
    return out


# -- running one fault ----------------------------------------------------------------------------


def healthy_view(stack: ChaosStack) -> list[str]:
    """What keeps the system from being recovered: the gateway does not see every endpoint as
    healthy with its breaker closed, or a part is not ready."""
    out = []
    try:
        text = httpx.get(f"{stack.gateway}/metrics", timeout=2).text
    except httpx.HTTPError as exc:
        return [f"gateway: {type(exc).__name__}"]
    for line in text.splitlines():
        if line.startswith("edgecloud_gateway_endpoint_healthy{") and not line.endswith(" 1.0"):
            out.append(line.split(" ")[0])
        if line.startswith("edgecloud_gateway_endpoint_breaker_state{") and not line.endswith(
                " 0.0"):
            out.append(line.split(" ")[0])
    if "agent" in stack.parts and not stack.parts["agent"].proc.alive():
        out.append("agent exited")
    return out


def run_fault(stack: ChaosStack, name: str, fault: Fault, window_s: float, workers: int,
              health_interval_s: float) -> Row:
    row = Row(name)
    traffic = MixedTraffic(f"{stack.gateway}/v1", MODEL, workers=workers)
    with RssMonitor(stack) as rss:
        traffic.start()
        try:
            with fault(stack, window_s) as note:
                time.sleep(window_s)
            # The fault has ended (the part is back, the link restored): time until the gateway
            # sees every endpoint healthy with its breaker closed, polled ten times per health
            # interval, given up after 60 intervals (and at least 30 s).
            row.recover_s, left = settle(lambda: healthy_view(stack),
                                         max(30.0, 60 * health_interval_s), health_interval_s / 10)
            if left:
                row.stuck.extend(f"not recovered: {x}" for x in left)
            elif row.recover_s is not None and row.recover_s > 2 * health_interval_s:
                note.append(f"recovery over 2 health intervals ({health_interval_s:g}s)")
        finally:
            traffic.stop()
        row.note = "; ".join(note)
        outs = traffic.stats.take()
        _, stuck = settle(lambda: stuck_states(stack), 15.0)
        row.stuck.extend(stuck)
        # A restricted request after recovery must be served where it may be.
        client_probe = traffic.client()
        for kind in ("private", "eu"):
            o = send_one(client_probe, MODEL, kind, stream=False)
            outs.append(o)
            if o.result != "served":
                row.stuck.append(f"after recovery {kind}: {o.result} {o.detail}")
        client_probe.close()
    row.peak_rss_mb, row.peak_part = rss.sample.peak_mb, rss.sample.peak_part
    row.sent = len(outs)
    row.served = sum(o.result == "served" for o in outs)
    row.refused = sum(o.result == "refused" for o in outs)
    row.failed = sum(o.result == "failed" for o in outs)
    row.wrong = sum(o.wrong_placement for o in outs)
    row.leaks = leaks(stack, outs)
    row.failures = [f"{o.kind}/{'s' if o.stream else 'n'}: {o.detail}" for o in outs
                    if o.result == "failed"][:5]
    return row


def render_soak(report: dict[str, Any]) -> str:
    """The soak's figures, one row per part."""
    head = ["part", "RSS MB first", "RSS MB last", "growth %", "fds first", "fds last",
            "tasks first", "tasks last"]
    rows = [head] + [[name, f"{p['rss_mb'][0]:.1f}", f"{p['rss_mb'][1]:.1f}",
                      f"{p['rss_growth_pct']}", str(p["fds"][0]), str(p["fds"][1]),
                      str(p["tasks"][0] if p["tasks"][0] is not None else "-"),
                      str(p["tasks"][1] if p["tasks"][1] is not None else "-")]
                     for name, p in report["parts"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([f"soak {report['minutes']} min: {report['requests']} requests, "
                      f"{report['served']} served, {report['failed']} failed, "
                      f"{len(report['leaks'])} leaks, stuck after: {report['stuck_after']}",
                      *lines])


_TASK_GAUGES = {"gateway": "edgecloud_gateway_asyncio_tasks",
                EDGE: "edgecloud_node_asyncio_tasks", CLOUD_EU: "edgecloud_node_asyncio_tasks"}


def asyncio_tasks(stack: ChaosStack, part: str) -> int | None:
    """Tasks on a part's event loop, from its /metrics (None where it has no such gauge)."""
    gauge = _TASK_GAUGES.get(part)
    if gauge is None:
        return None
    try:
        text = httpx.get(f"http://127.0.0.1:{stack.ports[part]}/metrics", timeout=3).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(gauge + " "):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def soak(stack: ChaosStack, minutes: float, workers: int, sample_s: float = 15.0
         ) -> dict[str, Any]:
    """Steady mixed load; resident memory and open files of every part, first vs last sample
    (the first is taken after one sample period of warm-up); every sample under `samples`."""
    traffic = MixedTraffic(f"{stack.gateway}/v1", MODEL, workers=workers)
    samples: list[dict[str, tuple[float, int, int | None]]] = []
    traffic.start()
    end = time.monotonic() + minutes * 60
    try:
        time.sleep(min(sample_s, minutes * 60 / 4))
        while True:
            samples.append({n: (process_rss_mb(p.proc.proc.pid if p.proc.proc else None),
                                process_fds(p.proc.proc.pid if p.proc.proc else None),
                                asyncio_tasks(stack, n))
                            for n, p in stack.parts.items()})
            if time.monotonic() >= end:
                break
            time.sleep(min(sample_s, max(0.0, end - time.monotonic())))
    finally:
        traffic.stop()
    outs = traffic.stats.take()
    first, last = samples[0], samples[-1]
    parts = {n: {"rss_mb": [round(first[n][0], 1), round(last[n][0], 1)],
                 "rss_growth_pct": round(100 * (last[n][0] - first[n][0]) / first[n][0], 1)
                 if first[n][0] else None,
                 "fds": [first[n][1], last[n][1]], "tasks": [first[n][2], last[n][2]]}
             for n in first if n in last}
    return {"minutes": minutes, "requests": len(outs),
            "served": sum(o.result == "served" for o in outs),
            "failed": sum(o.result == "failed" for o in outs),
            "leaks": leaks(stack, outs), "parts": parts,
            "stuck_after": settle(lambda: stuck_states(stack), 15.0)[1],
            "samples": {n: [[round(x[n][0], 1), x[n][1], x[n][2]] for x in samples if n in x]
                        for n in first}}
