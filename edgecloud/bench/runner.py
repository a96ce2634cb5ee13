"""One `edgecloud bench` run: check the target, apply each load level, sample resources, and
assemble the versioned results (partial when stopped or when the target fails)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import httpx
import orjson

from edgecloud.bench import loadgen
from edgecloud.bench.client import RequestSender, Target, make_session
from edgecloud.bench.errors import TargetError, TokenizerError
from edgecloud.bench.options import Scenario
from edgecloud.bench.results import BenchResults, ImageSet, LevelSummary, RequestRecord
from edgecloud.bench.server_metrics import (
    image_ms_per_image,
    images_from_timings,
    read_image_counters,
)
from edgecloud.bench.stats import find_knee, summarize, summarize_level

log = logging.getLogger("edgecloud.bench")

TokenSource = Literal["server_usage", "tokenizer", "chunks"]
Progress = Callable[[float, int, int | None], None]  # level, done, total (None: by time)


@dataclass
class RunSettings:
    """Everything a run needs besides the target."""

    scenario: Scenario
    levels: Sequence[float]
    bodies: Sequence[bytes]
    workload: str
    requests: int | None = None
    duration_s: float | None = None
    slo: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    warmup: int = 1
    burst_gap_s: float = 0.5
    label: str = ""
    server_pid: int | None = None
    watts_per_core: float = 10.0
    sample_resources: bool = True
    knee_min_gain: float = 0.10
    knee_latency_factor: float = 2.0
    tokenizer: str | None = None  # .gguf or tokenizer.json: counts tokens when no usage
    images: ImageSet | None = None  # image workloads: read the server's image time per level


def api_root(url: str) -> str:
    """Accept `http://host:port`, `.../v1` or `.../v1/`: return the root ending in /v1."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    elif url.endswith("/completions"):
        url = url[: -len("/completions")]
    return url if urlsplit(url).path not in ("", "/") else url + "/v1"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


async def preflight(
    session: httpx.AsyncClient, base_url: str, api_key: str | None, model: str | None,
    timeout_s: float,
) -> str:
    """GET /models: check that this is an OpenAI-compatible endpoint; return the model id."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        resp = await session.get(url, headers=headers, timeout=timeout_s)
        raw = resp.content
        status = resp.status_code
    except httpx.TimeoutException:
        raise TargetError(
            f"{url} did not answer within {timeout_s:g} s: the server hangs or is overloaded"
        ) from None
    except httpx.ConnectError as exc:
        cause = exc.__cause__ or exc.__context__
        why = getattr(cause, "strerror", None) or _describe(exc)
        raise TargetError(f"cannot connect to {base_url}: {why.lower()}; is it running?") from None
    except httpx.HTTPError as exc:
        raise TargetError(f"{url} failed: {_describe(exc)}") from None
    if status in (401, 403):
        raise TargetError(
            f"{url} answered {status}: the endpoint wants an API key; pass --api-key-env VAR "
            "with the name of the environment variable that holds it"
        )
    ids: list[str] = []
    if status == 200:
        try:
            obj = orjson.loads(raw)
            ids = [str(m["id"]) for m in obj["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise TargetError(
                f"{url} answered 200 but not with an OpenAI model list: is {base_url} an "
                "OpenAI-compatible API root (usually ending in /v1)?"
            ) from None
    if model:
        return model
    if not ids:
        raise TargetError(
            f"{url} answered {status} with no models; pass --model with the id to request"
        )
    return ids[0]


async def _warmup(sender: RequestSender, bodies: Sequence[bytes], n: int) -> None:
    for i in range(n):
        rec = await sender.send(bodies[i % len(bodies)], 0.0)
        if not rec.ok:
            raise TargetError(_warmup_message(sender.target, rec))


def _warmup_message(target: Target, rec: RequestRecord) -> str:
    kind = rec.error or "error"
    hints = {
        "connect": "the connection was refused; is the server running?",
        "http_401": "unauthorized; pass --api-key-env VAR",
        "http_404": f"not found; does the server serve {target.url} and model {target.model!r}?",
        "not_openai": "the answer is not an OpenAI completion (wrong URL?)",
        "timeout": f"no complete answer within {target.timeout_s:g} s (the server hangs?)",
        "stream_incomplete": "the stream ended before [DONE]",
    }
    return f"warm-up request to {target.url} failed ({kind}): {hints.get(kind, 'see the server')}"


async def run_bench(
    target_url: str,
    settings: RunSettings,
    *,
    model: str | None = None,
    api_key: str | None = None,
    stream: bool = True,
    route: str = "chat",
    timeout_s: float = 120.0,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> BenchResults:
    """Run every level; always returns results (partial, with a note, when something failed)."""
    from edgecloud.bench.resources import ResourceSampler, find_pid_by_port, machine_info

    stop = stop or asyncio.Event()
    base = api_root(target_url)
    results = BenchResults(
        label=settings.label,
        endpoint=base,
        model=model or "",
        scenario=settings.scenario,
        workload=settings.workload,
        slo=dict(settings.slo),
        machine=machine_info(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        stream=stream,
        seed=settings.seed,
        complete=False,
        images=settings.images.model_copy() if settings.images is not None else None,
        settings={
            "levels": list(settings.levels),
            "requests": settings.requests,
            "duration_s": settings.duration_s,
            "warmup": settings.warmup,
            "route": route,
            "timeout_s": timeout_s,
        },
    )
    outcomes: list[loadgen.LevelOutcome] = []
    limit = 0 if settings.scenario in ("rate", "burst") else int(max(settings.levels, default=1))
    sampler = None
    sender = None
    counter: Callable[[str], int] | None = None
    # Image workloads: the server's image counters, read around each level.
    scrape = make_session(1, 10.0) if settings.images is not None else None
    t0 = time.perf_counter()
    try:
        session = make_session(1, timeout_s)
        try:
            results.model = await preflight(session, base, api_key, model, min(timeout_s, 10.0))
        finally:
            await session.aclose()
        target = Target(base, results.model, api_key, route, stream, timeout_s)
        counter = None
        if settings.tokenizer:
            from edgecloud.bench.tokens import load_counter

            try:
                counter = await asyncio.to_thread(load_counter, settings.tokenizer)
            except TokenizerError as exc:
                raise TargetError(str(exc)) from None
        sender = RequestSender(target, t0, limit, collect_text=counter is not None)
        await _warmup(sender, settings.bodies, settings.warmup)
        pid = settings.server_pid
        if pid is None:
            parts = urlsplit(base)
            if parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port:
                pid = find_pid_by_port(parts.port)
        if settings.sample_resources:
            sampler = ResourceSampler(pid, t0).start()
            results.server_pid = sampler.server_pid
        for level in settings.levels:
            if stop.is_set():
                break
            before = await read_image_counters(scrape, base) if scrape is not None else None
            outcome = await _one_level(sender, settings, level, stop, progress)
            if scrape is not None:
                after = await read_image_counters(scrape, base)
                outcome.server_images, outcome.image_ms = image_ms_per_image(before, after)
            outcomes.append(outcome)
            if outcome.fatal:
                kind = outcome.fatal
                raise TargetError(
                    _warmup_message(
                        target, RequestRecord(level=level, start_s=0.0, ok=False, error=kind)
                    ).replace("warm-up ", "")
                )
        if stop.is_set():
            results.note = "stopped before the end (interrupted); these are the levels measured"
        else:
            results.complete = True
    except TargetError as exc:
        results.note = str(exc)
    except asyncio.CancelledError:
        results.note = "stopped before the end (interrupted); these are the levels measured"
    except Exception as exc:  # a bug of ours: still keep what was measured
        log.exception("bench_failed")
        results.note = f"stopped by an unexpected error ({type(exc).__name__}: {exc})"
    finally:
        if scrape is not None:
            await scrape.aclose()
        if sender is not None:
            sender.close()
            if counter is not None and sender.texts:
                _count_tokens(outcomes, sender.texts, counter)
        _fill(results, outcomes, settings)
        if sampler is not None:
            ok = [r for r in results.records if r.ok]
            results.energy = sampler.stop(
                len(ok), sum(r.output_tokens for r in ok), settings.watts_per_core
            )
            results.resources = sampler.samples
    return results


async def _one_level(
    sender: RequestSender,
    s: RunSettings,
    level: float,
    stop: asyncio.Event,
    progress: Progress | None,
) -> loadgen.LevelOutcome:
    count = s.requests
    if count is None and s.duration_s is None:
        count = 20 if s.scenario == "single" else max(16, int(4 * level))
        if s.scenario == "rate":
            count = max(10, int(level * 20))
    total = count if count is not None else None

    def tick(done: int) -> None:
        if progress is not None:
            progress(level, done, total)

    tick(0)
    if s.scenario in ("single", "concurrency"):
        n = 1 if s.scenario == "single" else int(level)
        return await loadgen.closed_loop(
            sender, s.bodies, n, count=count, duration_s=s.duration_s, stop=stop, tick=tick
        )
    if s.scenario == "rate":
        return await loadgen.open_loop(
            sender,
            s.bodies,
            level,
            count=count,
            duration_s=s.duration_s,
            seed=s.seed,
            stop=stop,
            tick=tick,
        )
    return await loadgen.bursts(
        sender,
        s.bodies,
        int(level),
        count=count or int(level) * 4,
        gap_s=s.burst_gap_s,
        stop=stop,
        tick=tick,
    )


def _count_tokens(
    outcomes: list[loadgen.LevelOutcome], texts: dict[int, str], count: Callable[[str], int]
) -> None:
    """After the run (no CPU taken from it): tokenizer counts where the server gave no usage."""
    for o in outcomes:
        for rec in o.records:
            text = texts.get(id(rec))
            if text is not None and rec.token_source == "chunks":
                rec.output_tokens = count(text)
                rec.token_source = "tokenizer"


def _fill(results: BenchResults, outcomes: list[loadgen.LevelOutcome], s: RunSettings) -> None:
    levels: list[LevelSummary] = []
    records: list[RequestRecord] = []
    timed = False  # some level's image time came from the answers' timings
    for o in outcomes:
        if not o.records:
            continue
        summary = summarize_level(o.level, o.records, o.duration_s, s.slo or None)
        summary.client_cpu_s = round(o.cpu_s, 4)
        summary.client_cpu_share = round(o.cpu_s / o.duration_s, 4) if o.duration_s else None
        if o.send_lag_ms:
            summary.send_lag_ms = summarize(o.send_lag_ms)
        summary.offered = o.offered
        if s.images is not None:
            summary.server_images = o.server_images
            summary.image_ms = round(o.image_ms, 3) if o.image_ms is not None else None
            if o.image_ms is None:  # no counters to read (e.g. through a gateway): the answers
                n, ms = images_from_timings(o.records)
                if n is not None and ms is not None:
                    summary.server_images, summary.image_ms = n, round(ms, 3)
                    timed = True
        levels.append(summary)
        records.extend(o.records)
    results.levels = levels
    results.records = records
    if results.images is not None:
        reported = any(lv.image_ms is not None for lv in levels)
        results.images.image_time_source = (
            "none" if not reported else "server_timings" if timed else "server_metrics")
    sources = {r.token_source for r in records if r.ok and r.token_source}
    weakest_first: tuple[TokenSource, ...] = ("chunks", "tokenizer", "server_usage")
    for source in weakest_first:
        if source in sources:
            results.token_count_source = source
            break
    if len(levels) >= 2:
        results.knee = find_knee(
            levels, min_gain=s.knee_min_gain, latency_factor=s.knee_latency_factor
        )
