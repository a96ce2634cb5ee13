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
from edgecloud.bench.resources import ResourceSampler, find_pid_by_port, machine_info
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


@dataclass(frozen=True)
class Connection:
    """How to reach the target: what `run_bench` sends every request with."""

    model: str | None = None  # None: the first model the endpoint lists
    api_key: str | None = None
    stream: bool = True
    route: str = "chat"
    timeout_s: float = 120.0


INTERRUPTED = "stopped before the end (interrupted); these are the levels measured"


def new_results(base: str, settings: RunSettings, conn: Connection) -> BenchResults:
    """The one builder of a run's results: what was asked, before anything is measured
    (`complete` stays False until every level has run)."""
    return BenchResults(
        label=settings.label,
        endpoint=base,
        model=conn.model or "",
        scenario=settings.scenario,
        workload=settings.workload,
        slo=dict(settings.slo),
        machine=machine_info(),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        stream=conn.stream,
        seed=settings.seed,
        complete=False,
        images=settings.images.model_copy() if settings.images is not None else None,
        settings={
            "levels": list(settings.levels),
            "requests": settings.requests,
            "duration_s": settings.duration_s,
            "warmup": settings.warmup,
            "route": conn.route,
            "timeout_s": conn.timeout_s,
        },
    )


def request_failed(target: Target, kind: str, what: str = "request") -> str:
    """Why requests to the target fail, with a hint (`what`: "warm-up request", ...)."""
    hints = {
        "connect": "the connection was refused; is the server running?",
        "http_401": "unauthorized; pass --api-key-env VAR",
        "http_404": f"not found; does the server serve {target.url} and model {target.model!r}?",
        "not_openai": "the answer is not an OpenAI completion (wrong URL?)",
        "timeout": f"no complete answer within {target.timeout_s:g} s (the server hangs?)",
        "stream_incomplete": "the stream ended before [DONE]",
    }
    return f"{what} to {target.url} failed ({kind}): {hints.get(kind, 'see the server')}"


async def _warmup(sender: RequestSender, bodies: Sequence[bytes], n: int) -> None:
    for i in range(n):
        rec = await sender.send(bodies[i % len(bodies)], 0.0)
        if not rec.ok:
            kind = rec.error or "error"
            raise TargetError(request_failed(sender.target, kind, "warm-up request"))


async def _connect(base: str, conn: Connection, timeout_s: float) -> str:
    """Preflight: the endpoint is OpenAI-compatible; the model id to request."""
    session = make_session(1, timeout_s)
    try:
        return await preflight(session, base, conn.api_key, conn.model, min(timeout_s, 10.0))
    finally:
        await session.aclose()


async def _token_counter(tokenizer: str | None) -> Callable[[str], int] | None:
    """A tokenizer's counter, where the server gives no usage and one was named."""
    if not tokenizer:
        return None
    from edgecloud.bench.tokens import load_counter

    try:
        return await asyncio.to_thread(load_counter, tokenizer)
    except TokenizerError as exc:
        raise TargetError(str(exc)) from None


def _local_server_pid(base: str, given: int | None) -> int | None:
    """The server process to sample: the given pid, else the one listening on a local port."""
    if given is not None:
        return given
    parts = urlsplit(base)
    if parts.hostname in ("127.0.0.1", "localhost", "::1") and parts.port:
        return find_pid_by_port(parts.port)
    return None


@dataclass
class _Run:
    """What one run holds while it goes, so that a partial run still writes it all."""

    settings: RunSettings
    results: BenchResults
    outcomes: list[loadgen.LevelOutcome] = field(default_factory=list)
    sender: RequestSender | None = None
    counter: Callable[[str], int] | None = None
    sampler: ResourceSampler | None = None
    scrape: httpx.AsyncClient | None = None  # image workloads: the server's image counters

    async def levels(self, base: str, stop: asyncio.Event, progress: Progress | None) -> None:
        assert self.sender is not None
        for level in self.settings.levels:
            if stop.is_set():
                return
            scrape = self.scrape
            before = await read_image_counters(scrape, base) if scrape is not None else None
            outcome = await _one_level(self.sender, self.settings, level, stop, progress)
            if scrape is not None:
                after = await read_image_counters(scrape, base)
                outcome.server_images, outcome.image_ms = image_ms_per_image(before, after)
            self.outcomes.append(outcome)
            if outcome.fatal:
                raise TargetError(request_failed(self.sender.target, outcome.fatal))

    async def finish(self) -> BenchResults:
        """Close what the run opened and fill in what it measured."""
        if self.scrape is not None:
            await self.scrape.aclose()
        if self.sender is not None:
            self.sender.close()
            if self.counter is not None and self.sender.texts:
                _count_tokens(self.outcomes, self.sender.texts, self.counter)
        results = self.results
        _fill(results, self.outcomes, self.settings)
        if self.sampler is not None:
            ok = [r for r in results.records if r.ok]
            results.energy = self.sampler.stop(
                len(ok), sum(r.output_tokens for r in ok), self.settings.watts_per_core
            )
            results.resources = self.sampler.samples
        return results


async def run_bench(
    target_url: str,
    settings: RunSettings,
    conn: Connection | None = None,
    *,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
) -> BenchResults:
    """Run every level; always returns results (partial, with a note, when something failed)."""
    conn = conn or Connection()
    stop = stop or asyncio.Event()
    base = api_root(target_url)
    run = _Run(settings, new_results(base, settings, conn))
    run.scrape = make_session(1, 10.0) if settings.images is not None else None
    t0 = time.perf_counter()
    try:
        run.results.model = await _connect(base, conn, conn.timeout_s)
        target = Target(base, run.results.model, conn.api_key, conn.route, conn.stream,
                        conn.timeout_s)
        run.counter = await _token_counter(settings.tokenizer)
        open_loop = settings.scenario in ("rate", "burst")
        limit = 0 if open_loop else int(max(settings.levels, default=1))
        run.sender = RequestSender(target, t0, limit, collect_text=run.counter is not None)
        await _warmup(run.sender, settings.bodies, settings.warmup)
        if settings.sample_resources:
            run.sampler = ResourceSampler(_local_server_pid(base, settings.server_pid), t0).start()
            run.results.server_pid = run.sampler.server_pid
        await run.levels(base, stop, progress)
        if stop.is_set():
            run.results.note = INTERRUPTED
        else:
            run.results.complete = True
    except TargetError as exc:
        run.results.note = str(exc)
    except asyncio.CancelledError:
        run.results.note = INTERRUPTED
    except Exception as exc:  # a bug of ours: still keep what was measured
        log.exception("bench_failed")
        run.results.note = f"stopped by an unexpected error ({type(exc).__name__}: {exc})"
    finally:
        await run.finish()
    return run.results


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
