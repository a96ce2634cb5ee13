"""Continuous batching over a multi-sequence model (llama.cpp behind `EngineBackend`).

One engine thread owns the backend. Each step it builds one batch holding the next token of
every generating sequence plus a chunk of any prompt still being read, decodes it once, samples
every sequence, and hands the new text to the event loop in one call. Requests join and leave
between steps, so total tokens/s grows with concurrency.

A slot moves IDLE -> READING_PROMPT -> GENERATING -> IDLE (as llama.cpp's server slots do). The
step is three parts: `_build_batch` (cancelled slots out, waiting requests in, one token per
generating slot, then prompt chunks, never more than `n_batch` entries), `backend.decode`, and
`_sample_and_emit` (one token per slot that has logits, stop strings, end of generation).

A prompt is token ids; an image stands in it as MEDIA_TOKEN entries, one per embedding, with
the image itself in the request's `media`. A slot reads the text before an image in the shared
batch; in a later step (once that text is in its cache) `_feed_prompts` has the backend
evaluate the image for that sequence alone (`eval_media`: encode, then decode its embeddings)
before the shared batch is decoded. At most one image is evaluated per step, so the other
slots' token streams wait for at most one image at a time.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgecloud.logs import log_event
from edgecloud.node.backend import MEDIA_TOKEN, EngineBackend, PromptMedia, Sampler, SamplingParams
from edgecloud.node.logprobs import TokenLogprob

__all__ = [
    "BatchEngine",
    "EngineStats",
    "GenerationRequest",
    "SamplingParams",
    "SlotState",
    "StreamEvent",
]


@dataclass
class StreamEvent:
    """What one step produced for one request: new text, and the end if it ended."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None
    first_token_at: float | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token, if asked


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
    media: PromptMedia | None = None  # the items behind the MEDIA_TOKEN entries of `prompt`
    media_read: int = 0  # items evaluated so far
    media_seconds: float = 0.0  # engine time they took
    stop_hit: str | None = None  # the stop string that ended it, if one did

    def cancel(self) -> None:
        """Called from the event loop when the client went away; the slot frees next step."""
        self.cancelled = True

    def timings(self) -> dict[str, float | int]:
        """Where the request's time went, in llama-server's `timings` shape (ms): the prompt
        read (`prompt_*`, images included; `cache_n` tokens reused), the output (`predicted_*`),
        plus edgecloud's `queued_ms` (waiting for a slot) and `images_n` / `images_ms` (encode
        and embed of its images, part of `prompt_ms`). Read once the request has finished."""
        start = self.admitted_at if self.admitted_at is not None else self.submitted_at
        first = self.first_token_at if self.first_token_at is not None else start
        end = self.finished_at if self.finished_at is not None else first
        prompt_n = len(self.prompt) - self.cached_tokens
        prompt_ms = (first - start) * 1000.0
        out_n = self.output_tokens
        out_ms = (end - first) * 1000.0
        out: dict[str, float | int] = {
            "queued_ms": round((start - self.submitted_at) * 1000.0, 3),
            "cache_n": self.cached_tokens,
            "prompt_n": prompt_n,
            "prompt_ms": round(prompt_ms, 3),
            "prompt_per_token_ms": round(prompt_ms / prompt_n, 3) if prompt_n else 0.0,
            "prompt_per_second": round(prompt_n / prompt_ms * 1000.0, 2) if prompt_ms else 0.0,
            "predicted_n": out_n,
            "predicted_ms": round(out_ms, 3),
            # The first token comes with the prompt's last step: the rest make the rate.
            "predicted_per_token_ms": round(out_ms / (out_n - 1), 3) if out_n > 1 else 0.0,
            "predicted_per_second": (round((out_n - 1) / out_ms * 1000.0, 2)
                                     if out_n > 1 and out_ms else 0.0),
        }
        if self.media_read:
            out["images_n"] = self.media_read
            out["images_ms"] = round(self.media_seconds * 1000.0, 3)
        return out

    def free_media(self) -> None:
        """Release the prompt's media (engine thread, or a request that never reached it)."""
        media, self.media = self.media, None
        if media is not None:
            media.free()


class SlotState(enum.Enum):
    IDLE = "idle"  # no request; the KV cache of its sequence is kept for prefix reuse
    READING_PROMPT = "reading_prompt"  # prompt tokens go into the batch in chunks
    GENERATING = "generating"  # one token per step: the last sampled one


class _Slot:
    """One sequence of the context, serving one request at a time."""

    __slots__ = (
        "seq",
        "state",
        "req",
        "pos",
        "pending",
        "cached",
        "sampler",
        "decoder",
        "held",
        "n_out",
        "last_token",
        "logits_at",
        "media_next",
    )

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.state = SlotState.IDLE
        self.req: GenerationRequest | None = None
        self.pos = 0  # tokens already in the KV cache for this sequence
        self.pending: list[int] = []  # prompt tokens not yet decoded
        self.cached: list[int] = []  # tokens whose KV is in this sequence's cache, in order
        self.sampler: Sampler | None = None
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.held = ""  # text held back because it may be the start of a stop string
        self.n_out = 0
        self.last_token = 0
        self.logits_at = -1  # batch index of this slot's logits in the current step
        self.media_next = 0  # index in req.media.items of the next item to evaluate


class EngineStats:
    """Counters the metrics endpoint reads (written by the engine thread only)."""

    def __init__(self) -> None:
        self.steps = 0
        self.tokens_decoded = 0
        self.media_items = 0  # images evaluated
        self.media_seconds = 0.0  # time spent evaluating them (encode and decode)
        self.recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        now = time.perf_counter()
        total = sum(n for t, n in self.recent if now - t <= window_s)
        return total / window_s


_Out = list[tuple[GenerationRequest, StreamEvent]]
log = logging.getLogger("edgecloud.node")


class BatchEngine:
    """Runs generation for many requests at once on one `EngineBackend`."""

    def __init__(
        self, backend: EngineBackend, loop: asyncio.AbstractEventLoop, max_queue: int
    ) -> None:
        self.backend = backend
        self.loop = loop
        self.max_queue = max_queue
        self.slots = [_Slot(i) for i in range(backend.n_seq)]
        self.waiting: collections.deque[GenerationRequest] = collections.deque()
        self.stats = EngineStats()
        self._cv = threading.Condition()
        self._stopping = False
        self._draining = False
        self._active = 0
        self._thread = threading.Thread(target=self._run, name="edgecloud-engine", daemon=True)
        self._on_idle: Callable[[], None] | None = None
        self.broken: str | None = None  # set when the backend failed beyond recovery
        self._leases = 0  # users of the model outside the engine thread (see `lease`)

    # -- event-loop side ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active_slots(self) -> int:
        return self._active

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

    def lease(self) -> bool:
        """Keep the model from being freed while the caller uses it outside the engine (a
        prompt tokenised on a worker thread); False once it is stopping or draining. Pair
        with `unlease`."""
        with self._cv:
            if self._stopping or self._draining:
                return False
            self._leases += 1
        return True

    def unlease(self) -> None:
        with self._cv:
            self._leases -= 1
            self._cv.notify()

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
        if self._thread.ident is None:  # never started: free the model here
            self._shutdown()
        else:
            self._thread.join(timeout_s)

    # -- engine thread ------------------------------------------------------------------
    def _emit(self, batch: _Out) -> None:
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
                    out: _Out = []
                    try:
                        self._admit()
                    except Exception as exc:  # noqa: BLE001 - a backend fault, see _recover
                        self._recover(exc, out)
                    self._emit(out)
                if self.broken is None:
                    self._step()
                if self.broken is not None:
                    break
        finally:
            self._shutdown()

    def _recover(self, exc: Exception, out: _Out) -> None:
        """A part of a step raised: fail the requests in slots, not the engine.

        The cache may hold part of a batch, so it is cleared as after a failed decode. If even
        that raises, the backend is unusable: `broken` says why, the thread ends (cancelling
        whatever waits) and the service reports itself unready so a supervisor restarts it.
        """
        log_event(log, "engine_step_failed", logging.ERROR, error=repr(exc))
        try:
            self._fail_all(f"engine step failed: {type(exc).__name__}", out)
        except Exception as again:  # noqa: BLE001
            self.broken = f"{type(exc).__name__}, then {type(again).__name__} while recovering"
            log_event(log, "engine_broken", logging.CRITICAL, error=repr(again))
            with self._cv:
                self._stopping = True

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
                req.free_media()
                self._emit([(req, StreamEvent(finish_reason="cancelled"))])
                continue
            if not req.prompt or req.prompt[-1] == MEDIA_TOKEN:  # no logits to start from
                req.free_media()
                err = "empty prompt" if not req.prompt else "the prompt ends with an image"
                self._emit([(req, StreamEvent(finish_reason="error", error=err))])
                continue
            try:
                sampler = self.backend.new_sampler(req.sampling, req.prompt)
            except Exception as exc:  # noqa: BLE001 - e.g. a grammar llama.cpp refuses
                req.free_media()
                self._emit([(req, StreamEvent(finish_reason="error", error=str(exc)))])
                continue
            best = max(free, key=lambda s: _common_prefix(s.cached, req.prompt))
            self._attach(best, req, sampler)

    def _attach(self, slot: _Slot, req: GenerationRequest, sampler: Sampler) -> None:
        # The slot holds the request and its sampler first: if the backend raises below,
        # `_recover` fails the request and `_release` frees the sampler.
        slot.req = req
        slot.sampler = sampler
        self._active += 1
        n_keep = 0
        if slot.cached:
            # Keep at least the last prompt token to decode: its logits start the generation.
            n_keep = min(_common_prefix(slot.cached, req.prompt), len(req.prompt) - 1)
            n_keep = self.backend.keep_prefix(slot.seq, n_keep) if n_keep > 0 else 0
        if n_keep == 0:
            self.backend.clear_seq(slot.seq)
        del slot.cached[n_keep:]
        req.cached_tokens = n_keep
        req.admitted_at = time.perf_counter()
        slot.state = SlotState.READING_PROMPT
        slot.pos = n_keep
        slot.pending = req.prompt[n_keep:]
        slot.decoder.reset()
        slot.held = ""
        slot.n_out = 0
        slot.media_next = 0  # prefix reuse stops before the first image

    def _release(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.free()
            slot.sampler = None
        if slot.req is not None:
            slot.req.free_media()
        slot.req = None
        slot.state = SlotState.IDLE
        slot.pending = []
        # The KV cache of this sequence stays: the next request may share its prefix.
        with self._cv:
            self._active -= 1

    # -- one step: build the batch, decode it, sample and emit ----------------------------
    def _step(self) -> None:
        out: _Out = []
        try:
            self._drop_cancelled(out)
            n, ready = self._build_batch(out)
            if n == 0:
                return
            rc = self.backend.decode(n)
            if rc != 0:
                self._fail_all(f"llama_decode failed ({rc})", out)
                return
            self.stats.steps += 1
            self._sample_and_emit(ready, out)
            if self.waiting and any(s.req is None for s in self.slots):
                with self._cv:
                    self._admit()
        except Exception as exc:  # noqa: BLE001 - a backend fault must not stop the engine
            self._recover(exc, out)
        finally:
            self._emit(out)

    def _drop_cancelled(self, out: _Out) -> None:
        """Free the slots of cancelled requests; waiting requests take them this very step."""
        for slot in self.slots:
            if slot.req is not None and slot.req.cancelled:
                out.append((slot.req, StreamEvent(finish_reason="cancelled")))
                self._release(slot)
        if out:
            with self._cv:
                self._admit()

    def _build_batch(self, out: _Out) -> tuple[int, list[_Slot]]:
        """Fill the batch: the last token of every generating slot, then prompt chunks.

        Returns the number of entries and the slots whose logits this batch produces. Never
        more than `n_batch` entries: a generating slot that does not fit waits one step (and
        goes first in the next), which only happens when there are more slots than `n_batch`.
        """
        put = self.backend.put
        budget = self.backend.n_batch
        generating = SlotState.GENERATING
        ready: list[_Slot] = []
        n = 0
        skipped: list[_Slot] | None = None
        for slot in self.slots:
            slot.logits_at = -1
            if slot.state is generating:
                if n == budget:
                    skipped = [slot] if skipped is None else [*skipped, slot]
                    continue
                put(n, slot.last_token, slot.pos, slot.seq, True)
                slot.cached.append(slot.last_token)
                slot.logits_at = n
                slot.pos += 1
                n += 1
                ready.append(slot)
        if skipped is not None:
            self.slots = skipped + [s for s in self.slots if s not in skipped]
            return n, ready
        return self._feed_prompts(n, budget - n, ready, out), ready

    def _feed_prompts(self, n: int, budget: int, ready: list[_Slot], out: _Out) -> int:
        """Add chunks of prompts being read, within `budget` entries; the new batch size.

        A chunk stops before an image; the image is evaluated at the start of a later step,
        when the text before it is in the cache (at most one image a step).
        """
        media_done = False
        for slot in self.slots:
            if budget <= 0:
                break
            if slot.state is not SlotState.READING_PROMPT:
                continue
            if slot.pending[0] == MEDIA_TOKEN:
                if media_done or not self._eval_media(slot, out):
                    continue
                media_done = True
                if not slot.pending:  # cannot happen: a prompt ends with text (see _admit)
                    continue
            end = _media_start(slot.pending, budget)
            if end == 0:
                continue
            chunk = slot.pending[:end]
            del slot.pending[: len(chunk)]
            slot.cached.extend(chunk)
            done = not slot.pending
            self.backend.put_run(n, chunk, slot.pos, slot.seq, done)
            slot.pos += len(chunk)
            n += len(chunk)
            budget -= len(chunk)
            if done:
                slot.logits_at = n - 1
                slot.state = SlotState.GENERATING
                ready.append(slot)
        return n

    def _eval_media(self, slot: _Slot, out: _Out) -> bool:
        """Evaluate the image at the head of `slot.pending`; False (request failed) on error."""
        req = slot.req
        assert req is not None and req.media is not None
        item = req.media.items[slot.media_next]
        t0 = time.perf_counter()
        try:
            slot.pos = self.backend.eval_media(slot.seq, slot.pos, item)
        except Exception as exc:  # noqa: BLE001 - one request fails, the engine keeps serving
            out.append((req, StreamEvent(finish_reason="error", error=f"image: {exc}")))
            self.backend.clear_seq(slot.seq)
            slot.cached.clear()
            self._release(slot)
            return False
        took = time.perf_counter() - t0
        self.stats.media_items += 1
        self.stats.media_seconds += took
        req.media_read += 1
        req.media_seconds += took
        slot.media_next += 1
        del slot.pending[: item.n_tokens]
        slot.cached.extend([MEDIA_TOKEN] * item.n_tokens)
        return True

    def _fail_all(self, error: str, out: _Out) -> None:
        """A failed decode: the cache may hold part of the batch, so fail every request in it
        (and every other in a slot) and start from an empty cache; the engine keeps serving."""
        for slot in self.slots:
            if slot.req is not None:
                out.append((slot.req, StreamEvent(finish_reason="error", error=error)))
                self._release(slot)
            slot.cached.clear()
        self.backend.clear_memory()

    def _sample_and_emit(self, ready: list[_Slot], out: _Out) -> None:
        now = time.perf_counter()
        n_ctx_seq = self.backend.n_ctx_seq
        produced = 0
        for slot in ready:
            req = slot.req
            if req is None or slot.sampler is None:
                continue
            tok = slot.sampler.sample(slot.logits_at)
            if tok < 0:
                req.finished_at = now
                why = "the grammar allows no next token"
                out.append((req, StreamEvent(finish_reason="error", error=why)))
                self._release(slot)
                continue
            logprob = slot.sampler.logprob(slot.logits_at, tok)
            slot.last_token = tok
            slot.n_out += 1
            produced += 1
            req.output_tokens = slot.n_out
            first = None
            if req.first_token_at is None:
                req.first_token_at = first = now
            event = self._text_event(slot, tok)
            event.first_token_at = first
            if logprob is not None:
                event.logprobs.append(logprob)
            if event.finish_reason is None:
                late = req.deadline is not None and now > req.deadline
                if late or slot.n_out >= req.max_tokens or slot.pos + 1 >= n_ctx_seq:
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

    def _text_event(self, slot: _Slot, tok: int) -> StreamEvent:
        """Turn a sampled token into text, honouring end-of-generation and stop strings."""
        backend = self.backend
        req = slot.req
        assert req is not None
        if backend.is_eog(tok):
            text = slot.held + slot.decoder.decode(b"", final=True)
            slot.held = ""
            return StreamEvent(text=text, finish_reason="stop")
        new = slot.decoder.decode(backend.piece(tok))
        if not req.stop:
            return StreamEvent(text=new)
        # Any suffix of emitted text that could start a stop string is held back, so a stop
        # string can only begin inside `held + new`.
        window = slot.held + new
        cut = _first_stop(window, req.stop)
        if cut is not None:
            slot.held = ""
            req.stop_hit = next((s for s in req.stop if window.startswith(s, cut)), None)
            return StreamEvent(text=window[:cut], finish_reason="stop")
        keep = _partial_stop_suffix(window, req.stop)
        slot.held = window[len(window) - keep :] if keep else ""
        return StreamEvent(text=window[: len(window) - keep] if keep else window)

    def _shutdown(self) -> None:
        out: _Out = []
        for slot in self.slots:
            if slot.req is not None:
                out.append((slot.req, StreamEvent(finish_reason="cancelled")))
                self._release(slot)
        with self._cv:
            while self.waiting:
                req = self.waiting.popleft()
                req.free_media()
                out.append((req, StreamEvent(finish_reason="cancelled")))
        self._emit(out)
        with self._cv:
            self._stopping = True  # no new lease from here on
            while self._leases:  # bounded: a lease is one tokenisation
                self._cv.wait()
        self.backend.free()
        if self._on_idle is not None:
            try:
                self.loop.call_soon_threadsafe(self._on_idle)
            except RuntimeError:
                pass


def _deliver(batch: list[tuple[GenerationRequest, StreamEvent]]) -> None:
    for req, event in batch:
        req.events.put_nowait(event)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Shared leading tokens; it ends at the first image (MEDIA_TOKEN entries never match)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i] and a[i] != MEDIA_TOKEN:
        i += 1
    return i


def _media_start(pending: list[int], limit: int) -> int:
    """How many leading entries of `pending`, at most `limit`, come before its next image."""
    head = pending[:limit]
    try:
        return head.index(MEDIA_TOKEN)
    except ValueError:
        return len(head)


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
