"""Cold start: launch a server command, time its listening socket, /readyz 200 and first token."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Sequence

import httpx
import orjson

from edgecloud.bench.client import RequestSender, Target, make_session
from edgecloud.bench.errors import ColdStartError
from edgecloud.bench.results import ColdStart
from edgecloud.bench.stats import summarize
from edgecloud.supervise import ManagedProcess, StartFailed

_POLL_S = 0.02
_NO_ANSWER = ("connect", "timeout", "tls", "disconnect")  # a server not yet answering


async def cold_start_once(
    command: Sequence[str],
    target: Target,
    root_url: str,
    body: bytes,
    timeout_s: float,
    log_path: str | None = None,
) -> tuple[dict[str, float], ManagedProcess]:
    """One launch; returns the timings (seconds from launch) and the running process."""
    t0 = time.perf_counter()
    proc = ManagedProcess(command, root_url + "/readyz", log_path=log_path, name="cold-start")
    proc.start()
    timings: dict[str, float] = {}
    session = make_session(0, timeout_s)
    deadline = t0 + timeout_s
    try:

        async def ready() -> None:
            """The process's own readiness wait, on a thread beside the first-token probe."""
            try:
                await asyncio.to_thread(proc.wait_ready, timeout_s, _POLL_S)
            except StartFailed:
                return  # no ready_s; the first-token probe says why
            timings["ready_s"] = time.perf_counter() - t0

        async def model_id() -> str:
            """The model to ask for: the given one, else the first the server lists."""
            while target.model == "" and time.perf_counter() < deadline and proc.alive():
                try:
                    resp = await session.get(target.base_url.rstrip("/") + "/models")
                    timings.setdefault("process_start_s", time.perf_counter() - t0)
                    if resp.status_code == 200:
                        return str(orjson.loads(resp.content)["data"][0]["id"])
                except (httpx.HTTPError, ValueError, KeyError, IndexError):
                    pass
                await asyncio.sleep(_POLL_S)
            return target.model

        async def first_token() -> None:
            """The first streamed completion that answers, sent and timed as the load's are."""
            model = await model_id()
            request = orjson.dumps({**orjson.loads(body), "model": model})
            sender = RequestSender(target, t0, limit=1)
            try:
                while time.perf_counter() < deadline and proc.alive():
                    rec = await sender.send(request, level=0)
                    if rec.error not in _NO_ANSWER:
                        timings.setdefault("process_start_s", rec.start_s)
                    if rec.ok and rec.ttft_ms is not None:
                        timings["first_token_s"] = rec.start_s + rec.ttft_ms / 1000
                        return
                    await asyncio.sleep(_POLL_S)
            finally:
                sender.close()

        await asyncio.gather(ready(), first_token())
    finally:
        await session.aclose()
    if "first_token_s" not in timings:
        code = proc.proc.poll() if proc.proc else None
        proc.stop()
        why = f"exited with {code}" if code is not None else f"gave no token in {timeout_s:g} s"
        raise ColdStartError(f"cold start: `{shlex.join(command)}` {why}")
    return {k: round(v, 4) for k, v in timings.items()}, proc


async def measure_cold_start(
    command: str,
    target: Target,
    root_url: str,
    body: bytes,
    *,
    runs: int,
    timeout_s: float,
    keep_last: bool = False,
    log_path: str | None = None,
) -> tuple[ColdStart, ManagedProcess | None]:
    """`runs` launches; the last process is returned still running when `keep_last`."""
    argv = shlex.split(command)
    results: list[dict[str, float]] = []
    kept: ManagedProcess | None = None
    for i in range(runs):
        timings, proc = await cold_start_once(argv, target, root_url, body, timeout_s, log_path)
        results.append(timings)
        if keep_last and i == runs - 1:
            kept = proc
        else:
            await asyncio.to_thread(proc.stop)
    summary = {
        key[:-2] + "_ms": summarize(r[key] * 1000.0 for r in results if key in r)
        for key in ("process_start_s", "ready_s", "first_token_s")
    }
    return ColdStart(command=command, runs=results, summary=summary), kept
