"""The engine's one seam to the inference library: what the batch engine asks of a model.

`LoadedModel` (llama.cpp) implements `EngineBackend`; the engine never calls llama.cpp itself,
so it can be driven in-process by a scripted backend in the tests.

The engine calls these once per step, from its own thread:

- `put` / `put_run` write tokens into the backend's decode batch (at most `n_batch` of them),
  then `decode(n)` evaluates them in one call;
- `Sampler.sample(i)` picks the next token of one sequence from the logits at batch index `i`;
- `piece` / `is_eog` turn a sampled token into bytes or an end of generation;
- `keep_prefix` / `clear_seq` / `clear_memory` manage each sequence's KV cache.

Where later work plugs in:

- **Per-request sampler extras** (a grammar constraint, top-k log-probabilities of the chosen
  position): add fields to `SamplingParams` (the request's sampling spec) and build them in
  `EngineBackend.new_sampler`, the one place a request's sampler is made. A grammar sampler joins
  the chain there; log-probabilities are read by a `Sampler` method beside `sample` (same batch
  index, before the next `decode`), returned to the engine with the token.
- **Prompt items that are not tokens** (an image's embeddings evaluated through libmtmd): the
  request's token list holds MEDIA_TOKEN where each item of its `PromptMedia` stands; the
  engine evaluates one such item per step for one sequence with `eval_media`, outside the
  shared batch and after the text before it was decoded, then decodes the shared batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edgecloud.node.logprobs import TokenLogprob

PENALTY_LAST_N = 64  # tokens of history the repetition penalties look at

MEDIA_TOKEN = -1
"""A prompt position held by a non-token item (an image's embeddings): never a vocabulary id,
and never matched by prefix reuse (two images are not compared)."""


class MediaItem(Protocol):
    """One non-token item of a prompt: it fills `n_tokens` positions of the KV cache."""

    n_tokens: int


class PromptMedia(Protocol):
    """The non-token items of one request's prompt, in prompt order, and what owns them.

    The request's token list holds `n_tokens` MEDIA_TOKEN entries where each item stands.
    """

    @property
    def items(self) -> Sequence[MediaItem]: ...

    def free(self) -> None:
        """Release the items (the engine calls this once the request leaves it)."""
        ...


class MediaEvaluator(Protocol):
    """What evaluates a prompt's media items into the model's context (libmtmd's projector)."""

    def evaluate(self, item: object, seq: int, pos: int, n_batch: int) -> int:
        """Encode `item` and decode it into `seq` at `pos`; returns the next position."""
        ...

    def free(self) -> None:
        """Release it (before the model it was loaded for)."""
        ...


@dataclass(frozen=True)
class SamplingParams:
    """A request's sampling spec; `EngineBackend.new_sampler` turns it into a `Sampler`."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    grammar: str | None = None  # GBNF the output must match (structured output, forced calls)
    logprobs: int | None = None  # report each chosen token's log-probability and this top-k
    ignore_eos: bool = False  # never end on an end-of-generation token (equal-length benchmarks)


class Sampler(Protocol):
    """One request's sampler (its chain and state); freed when the request leaves its slot."""

    def sample(self, batch_index: int) -> int:
        """The next token from the logits at `batch_index` of the last decode; -1 when a
        grammar allows no token at all."""
        ...

    def logprob(self, batch_index: int, token: int) -> TokenLogprob | None:
        """`token`'s log-probability and the top-k at `batch_index` (None: not asked for).
        Read before the next decode, from the raw logits (before any sampler)."""
        ...

    def free(self) -> None: ...


class EngineBackend(Protocol):
    """A model with `n_seq` independent sequences that decodes batches of up to `n_batch`."""

    n_seq: int
    n_batch: int
    n_ctx_seq: int

    def piece(self, token: int) -> bytes:
        """The bytes of one token (control tokens render as nothing)."""
        ...

    def is_eog(self, token: int) -> bool:
        """True for an end-of-generation token."""
        ...

    def keep_prefix(self, seq: int, n_keep: int) -> int:
        """Drop the cache of `seq` after its first `n_keep` positions; how many were kept.

        Returns 0 (and the caller clears the sequence) when the prefix cannot be reused, e.g.
        sliding-window layers no longer hold the positions the new tokens need.
        """
        ...

    def clear_seq(self, seq: int) -> None:
        """Forget every cached position of `seq`."""
        ...

    def clear_memory(self) -> None:
        """Forget the cache of every sequence (after a failed decode)."""
        ...

    def put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        """Write one token at batch index `i` (0 <= i < n_batch)."""
        ...

    def put_run(self, i: int, tokens: Sequence[int], pos: int, seq: int, logits_last: bool) -> None:
        """Write consecutive tokens of `seq` from batch index `i`; logits for the last if asked."""
        ...

    def decode(self, n_tokens: int) -> int:
        """Evaluate the first `n_tokens` batch entries; 0 on success, llama.cpp's code otherwise."""
        ...

    def eval_media(self, seq: int, pos: int, item: MediaItem) -> int:
        """Evaluate one non-token prompt item into `seq` at position `pos`, outside the shared
        batch (an image: encode, then decode its embeddings); the next free position. Raises
        on failure, leaving `seq` to be cleared by the caller."""
        ...

    def new_sampler(self, spec: SamplingParams, prompt: Sequence[int]) -> Sampler:
        """The sampler for one request (`prompt` seeds the penalties' history)."""
        ...

    def free(self) -> None:
        """Release the model, its context and its batch."""
        ...
