"""Continuous batching over llama.cpp's multi-sequence batch API.

One engine thread owns the llama.cpp context. Each step it builds one batch holding the next
token of every generating sequence plus a chunk of any prompt still being read, decodes it
once, samples every sequence on the C side, and hands the new text to the event loop in one
call. Requests join and leave between steps, so total tokens/s grows with concurrency.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as ll

from edgecloud.node.constrained import GrammarSampler, logits_at
from edgecloud.node.logprobs import TokenLogprob, token_logprob
from edgecloud.node.model import LoadedModel

PENALTY_LAST_N = 64


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    grammar: str | None = None  # GBNF the output must match (structured output, forced calls)
    logprobs: int | None = None  # report the chosen token's log-probability and this top-k


@dataclass
class StreamEvent:
    """What one step produced for one request: new text, and the end if it ended."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    first_token_at: float | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class GenerationRequest:
    """A request as the engine sees it. The event loop reads `events`; the engine writes them."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    events: asyncio.Queue[StreamEvent] = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    output_tokens: int = 0
    admitted_at: float | None = None  # when a slot took it
    cached_tokens: int = 0  # prompt tokens reused from the slot's KV cache
    first_token_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None  # perf_counter time after which generation ends ("length")

    def cancel(self) -> None:
        """Called from the event loop when the client went away; the slot frees next step."""
        self.cancelled = True


class _Slot:
    """One sequence of the context, serving one request at a time."""

    __slots__ = (
        "seq",
        "req",
        "pos",
        "pending",
        "cached",
        "sampler",
        "constrained",
        "decoder",
        "held",
        "n_out",
        "last_token",
        "needs_logits_at",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.req: GenerationRequest | None = None
        self.pos = 0  # tokens already in the KV cache for this sequence
        self.pending: list[int] = []  # prompt tokens not yet decoded
        self.cached: list[int] = []  # tokens whose KV is in this sequence's cache, in order
        self.sampler: ll.llama_sampler_p | None = None
        self.constrained: GrammarSampler | None = None  # owns its own chain when set
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.held = ""  # text held back because it may be the start of a stop string
        self.n_out = 0
        self.last_token = 0
        self.needs_logits_at = -1  # batch index of this slot's logits in the current step


class EngineStats:
    """Counters the metrics endpoint reads (written by the engine thread only)."""

    def __init__(self) -> None:
        self.steps = 0
        self.tokens_decoded = 0
        self.recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        now = time.perf_counter()
        total = sum(n for t, n in self.recent if now - t <= window_s)
        return total / window_s


class BatchEngine:
    """Runs generation for many requests at once on one LoadedModel."""

    def __init__(self, model: LoadedModel, loop: asyncio.AbstractEventLoop, max_queue: int) -> None:
        self.model = model
        self.loop = loop
        self.max_queue = max_queue
        self.slots = [_Slot(i) for i in range(model.n_seq)]
        self.waiting: collections.deque[GenerationRequest] = collections.deque()
        self.stats = EngineStats()
        self._cv = threading.Condition()
        self._stopping = False
        self._draining = False
        self._active = 0
        self._batch = ll.llama_batch_init(model.n_batch, 0, 1)
        self._thread = threading.Thread(target=self._run, name="edgecloud-engine", daemon=True)
        self._on_idle: Callable[[], None] | None = None

    # -- event-loop side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active_slots(self) -> int:
        return self._active

    def has_room(self) -> bool:
        return self._active + len(self.waiting) < len(self.slots) + self.max_queue

    def submit(self, req: GenerationRequest) -> bool:
        """Queue a request; False when slots and queue are full (the caller answers 429)."""
        with self._cv:
            if self._stopping or self._draining:
                return False
            if self._active + len(self.waiting) >= len(self.slots) + self.max_queue:
                return False
            self.waiting.append(req)
            self._cv.notify()
        return True

    def drain_and_free(self, on_done: Callable[[], None] | None = None) -> None:
        """Stop taking requests; finish in-flight ones, then free the model (hot swap)."""
        with self._cv:
            self._draining = True
            self._on_idle = on_done
            self._cv.notify()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Cut every request (finish_reason "cancelled") and free the model."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout_s)

    # -- engine thread ------------------------------------------------------------------
    def _emit(self, batch: list[tuple[GenerationRequest, StreamEvent]]) -> None:
        if batch:
            try:
                self.loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the event loop is closed: the process is exiting
                pass

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while (
                        not self._stopping
                        and not self.waiting
                        and self._active == 0
                        and not self._draining
                    ):
                        self._cv.wait()
                    if self._stopping:
                        break
                    if self._draining and not self.waiting and self._active == 0:
                        break
                    self._admit()
                self._step()
        finally:
            self._shutdown()

    def _admit(self) -> None:
        """Move waiting requests into free slots (caller holds the lock).

        Each request takes the free slot whose cached tokens share the longest prefix with
        its prompt, so a conversation's next turn reads only its new tokens.
        """
        while self.waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self.waiting.popleft()
            if req.cancelled:
                self._emit([(req, StreamEvent(finish_reason="cancelled"))])
                continue
            best = max(free, key=lambda s: _common_prefix(s.cached, req.prompt))
            self._attach(best, req)

    def _reusable_prefix(self, slot: _Slot, prompt: list[int]) -> int:
        """How many cached tokens of `slot` the prompt can keep (0: read it all again)."""
        n_keep = min(_common_prefix(slot.cached, prompt), len(prompt) - 1)
        if n_keep <= 0:
            return 0
        n_swa = self.model.n_swa
        if n_swa > 0:
            # Sliding-window layers keep only the last n_swa positions: the new tokens need
            # the window before n_keep, which may already be gone.
            pos_min = ll.llama_memory_seq_pos_min(self.model.memory, slot.seq)
            if pos_min > max(0, n_keep - n_swa):
                return 0
        if not ll.llama_memory_seq_rm(self.model.memory, slot.seq, n_keep, -1):
            return 0
        return n_keep

    def _attach(self, slot: _Slot, req: GenerationRequest) -> None:
        n_keep = self._reusable_prefix(slot, req.prompt) if slot.cached else 0
        if n_keep == 0:
            ll.llama_memory_seq_rm(self.model.memory, slot.seq, -1, -1)
        del slot.cached[n_keep:]
        req.cached_tokens = n_keep
        req.admitted_at = time.perf_counter()
        slot.req = req
        slot.pos = n_keep
        slot.pending = req.prompt[n_keep:]
        slot.decoder.reset()
        slot.held = ""
        slot.n_out = 0
        chain = self._make_sampler(req.sampling, req.prompt)
        if req.sampling.grammar is not None:
            slot.constrained = GrammarSampler(
                self.model.vocab, req.sampling.grammar, chain, self.model.eog_ids
            )
        else:
            slot.sampler = chain
        self._active += 1

    def _make_sampler(self, p: SamplingParams, prompt: list[int]) -> ll.llama_sampler_p:
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = ll.llama_sampler_chain_init(params)
        penalties = (
            p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 or p.repeat_penalty != 1.0
        )
        greedy = p.temperature <= 0.0
        if p.grammar is not None:
            # The grammar sampler hands over its own cut of the vocabulary (the top 64).
            if p.top_k:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
        elif penalties or not greedy:
            # Penalties scan their window per candidate: cut the 262k vocabulary down first.
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k or 64))
        if penalties:
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_penalties(
                    self.model.n_vocab,
                    PENALTY_LAST_N,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                ),
            )
            for tok in prompt[-PENALTY_LAST_N:]:
                ll.llama_sampler_accept(chain, tok)
        if greedy:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        if p.top_p < 1.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(p.min_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(p.temperature))
        seed = p.seed if p.seed is not None else random.getrandbits(32)
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _release(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            ll.llama_sampler_free(slot.sampler)
            slot.sampler = None
        if slot.constrained is not None:
            slot.constrained.free()
            slot.constrained = None
        slot.req = None
        slot.pending = []
        # The KV cache of this sequence stays: the next request may share its prefix.
        with self._cv:
            self._active -= 1

    def _step(self) -> None:
        model = self.model
        batch = self._batch
        out: list[tuple[GenerationRequest, StreamEvent]] = []
        n = 0
        budget = model.n_batch
        # Drop cancelled requests first: their slot is free for this very step.
        for slot in self.slots:
            if slot.req is not None and slot.req.cancelled:
                out.append((slot.req, StreamEvent(finish_reason="cancelled")))
                self._release(slot)
        if out:
            with self._cv:
                self._admit()
        # 1) one token for every generating sequence, 2) prompt chunks with what is left.
        gen: list[_Slot] = []
        for slot in self.slots:
            slot.needs_logits_at = -1
            if slot.req is not None and not slot.pending and slot.n_out > 0:
                self._put(batch, n, slot.last_token, slot.pos, slot.seq, True)
                slot.cached.append(slot.last_token)
                slot.needs_logits_at = n
                slot.pos += 1
                n += 1
                gen.append(slot)
        budget -= n
        for slot in self.slots:
            if slot.req is None or not slot.pending or budget <= 0:
                continue
            chunk = slot.pending[:budget]
            del slot.pending[: len(chunk)]
            slot.cached.extend(chunk)
            last = len(chunk) - 1
            for i, tok in enumerate(chunk):
                is_last = i == last and not slot.pending
                self._put(batch, n, tok, slot.pos, slot.seq, is_last)
                if is_last:
                    slot.needs_logits_at = n
                slot.pos += 1
                n += 1
            budget -= len(chunk)
            if not slot.pending:
                gen.append(slot)
        if n == 0:
            self._emit(out)
            return
        batch.n_tokens = n
        rc = ll.llama_decode(model.ctx, batch)
        now = time.perf_counter()
        if rc != 0:
            # The cache may hold part of this batch: fail what was in it and start clean.
            for slot in self.slots:
                if slot.req is not None:
                    err = StreamEvent(finish_reason="error", error=f"llama_decode failed ({rc})")
                    out.append((slot.req, err))
                    self._release(slot)
                slot.cached.clear()
            ll.llama_memory_clear(model.memory, True)
            self._emit(out)
            return
        self.stats.steps += 1
        produced = 0
        for slot in gen:
            req = slot.req
            if req is None or slot.needs_logits_at < 0:
                continue
            logits = None
            if slot.constrained is not None or req.sampling.logprobs is not None:
                logits = logits_at(model.ctx, slot.needs_logits_at, model.n_vocab)
            if slot.constrained is not None:
                assert logits is not None
                tok = slot.constrained.sample(logits)
                if tok < 0:
                    req.finished_at = now
                    why = "the grammar allows no next token"
                    out.append((req, StreamEvent(finish_reason="error", error=why)))
                    self._release(slot)
                    continue
            else:
                tok = ll.llama_sampler_sample(slot.sampler, model.ctx, slot.needs_logits_at)
            slot.last_token = tok
            slot.n_out += 1
            produced += 1
            req.output_tokens = slot.n_out
            first = None
            if req.first_token_at is None:
                req.first_token_at = first = now
            event = self._text_event(slot, tok)
            event.first_token_at = first
            if logits is not None and req.sampling.logprobs is not None:
                event.logprobs.append(token_logprob(logits, tok, req.sampling.logprobs))
            if event.finish_reason is None:
                late = req.deadline is not None and now > req.deadline
                if late or slot.n_out >= req.max_tokens or slot.pos + 1 >= model.n_ctx_seq:
                    event.text += slot.held + slot.decoder.decode(b"", final=True)
                    slot.held = ""
                    event.finish_reason = "length"
            if event.finish_reason is not None:
                req.finished_at = now
                out.append((req, event))
                self._release(slot)
            elif event.text or event.logprobs or first is not None:
                out.append((req, event))
        self.stats.tokens_decoded += produced
        self.stats.recent.append((now, produced))
        self._emit(out)
        if any(s.req is None for s in self.slots) and self.waiting:
            with self._cv:
                self._admit()

    def _text_event(self, slot: _Slot, tok: int) -> StreamEvent:
        """Turn a sampled token into text, honouring end-of-generation and stop strings."""
        model = self.model
        req = slot.req
        assert req is not None
        if model.is_eog(tok):
            text = slot.held + slot.decoder.decode(b"", final=True)
            slot.held = ""
            return StreamEvent(text=text, finish_reason="stop")
        new = slot.decoder.decode(model.piece(tok))
        if not req.stop:
            return StreamEvent(text=new)
        # Any suffix of emitted text that could start a stop string is held back, so a stop
        # string can only begin inside `held + new`.
        window = slot.held + new
        cut = _first_stop(window, req.stop)
        if cut is not None:
            slot.held = ""
            return StreamEvent(text=window[:cut], finish_reason="stop")
        keep = _partial_stop_suffix(window, req.stop)
        slot.held = window[len(window) - keep :] if keep else ""
        return StreamEvent(text=window[: len(window) - keep] if keep else window)

    @staticmethod
    def _put(batch: Any, i: int, tok: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _shutdown(self) -> None:
        out: list[tuple[GenerationRequest, StreamEvent]] = []
        for slot in self.slots:
            if slot.req is not None:
                out.append((slot.req, StreamEvent(finish_reason="cancelled")))
                self._release(slot)
        with self._cv:
            while self.waiting:
                out.append((self.waiting.popleft(), StreamEvent(finish_reason="cancelled")))
        self._emit(out)
        ll.llama_batch_free(self._batch)
        self.model.free()
        if self._on_idle is not None:
            self.loop.call_soon_threadsafe(self._on_idle)


def _deliver(batch: list[tuple[GenerationRequest, StreamEvent]]) -> None:
    for req, event in batch:
        req.events.put_nowait(event)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    best: int | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def _partial_stop_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:k]):
                keep = k
                break
    return keep
