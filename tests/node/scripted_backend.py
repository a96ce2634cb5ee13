"""ScriptedBackend: a deterministic fake of the engine's `EngineBackend`, for in-process tests.

Tokens are bytes (token t is the byte t; token 0 is the end of generation), so a reply is
written as a byte string. Each request's reply is chosen by `reply(prompt)`. The fake keeps a
model of every sequence's KV cache and checks what a real decode would require: batch size
within `n_batch`, one entry per position, positions contiguous per sequence, samplers reading
only entries that asked for logits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecloud.node.backend import MEDIA_TOKEN, SamplingParams
from edgecloud.node.model import ModelInfo

EOG = 0


@dataclass(frozen=True)
class Entry:
    token: int
    pos: int
    seq: int
    logits: bool


class ScriptedSampler:
    def __init__(self, backend: ScriptedBackend, reply: bytes) -> None:
        self.backend = backend
        self.reply = list(reply)
        self.freed = False

    def sample(self, batch_index: int) -> int:
        entry = self.backend.last_batch[batch_index]
        assert entry.logits, "sampled an entry that asked for no logits"
        assert not self.freed
        return self.reply.pop(0) if self.reply else EOG

    def logprob(self, batch_index: int, token: int) -> None:
        return None

    def free(self) -> None:
        assert not self.freed, "sampler freed twice"
        self.freed = True


class ScriptedBackend:
    """Implements `EngineBackend` without a model; see the module docstring."""

    def __init__(
        self,
        *,
        n_seq: int = 4,
        n_batch: int = 64,
        n_ctx_seq: int = 512,
        reply: Callable[[Sequence[int]], bytes] = lambda prompt: b"ok",
    ) -> None:
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.n_ctx_seq = n_ctx_seq
        self.reply = reply
        self.kv: list[list[int]] = [[] for _ in range(n_seq)]
        self.slots_buf: list[Entry | None] = [None] * n_batch
        self.last_batch: list[Entry] = []
        self.batches: list[list[Entry]] = []
        self.samplers: list[ScriptedSampler] = []
        self.fail_decodes: set[int] = set()  # decode call numbers (1-based) that fail
        self.on_decode: Callable[[int], None] | None = None  # runs inside decode call n
        self.gate = threading.Event()  # decode waits for it
        self.gate.set()
        self.freed = 0
        self.timeline: list[tuple[str, int]] = []  # ("decode", n) and ("media", seq) in order
        self.fail_media: set[int] = set()  # eval_media call numbers (1-based) that raise

    # -- EngineBackend -------------------------------------------------------------------------
    def piece(self, token: int) -> bytes:
        return bytes([token])

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def keep_prefix(self, seq: int, n_keep: int) -> int:
        assert 0 < n_keep <= len(self.kv[seq])
        del self.kv[seq][n_keep:]
        return n_keep

    def clear_seq(self, seq: int) -> None:
        self.kv[seq].clear()

    def clear_memory(self) -> None:
        for cache in self.kv:
            cache.clear()

    def put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        assert 0 <= i < self.n_batch, f"write at {i} past a batch of {self.n_batch}"
        self.slots_buf[i] = Entry(token, pos, seq, logits)

    def put_run(self, i: int, tokens: Sequence[int], pos: int, seq: int, logits_last: bool) -> None:
        last = len(tokens) - 1
        for k, tok in enumerate(tokens):
            self.put(i + k, tok, pos + k, seq, logits_last and k == last)

    def decode(self, n_tokens: int) -> int:
        assert 0 < n_tokens <= self.n_batch
        self.gate.wait()
        call = len(self.batches) + 1
        batch = [e for e in self.slots_buf[:n_tokens] if e is not None]
        assert len(batch) == n_tokens, "batch has holes"
        self.slots_buf = [None] * self.n_batch
        self.batches.append(batch)
        if self.on_decode is not None:
            self.on_decode(call)
        if call in self.fail_decodes:
            # A real failed decode may leave part of the batch in the cache.
            for e in batch[: len(batch) // 2]:
                self.kv[e.seq].append(e.token)
            return 1
        for e in batch:
            assert e.pos == len(self.kv[e.seq]), f"seq {e.seq}: pos {e.pos} after {self.kv[e.seq]}"
            self.kv[e.seq].append(e.token)
        self.last_batch = batch
        self.timeline.append(("decode", n_tokens))
        return 0

    def eval_media(self, seq: int, pos: int, item: Any) -> int:
        """An image: its positions follow what the sequence already holds, as in a real cache."""
        calls = sum(1 for kind, _ in self.timeline if kind == "media") + 1
        self.timeline.append(("media", seq))
        assert pos == len(self.kv[seq]), f"image at {pos}, but seq {seq} holds {self.kv[seq]}"
        if calls in self.fail_media:
            self.kv[seq].extend([MEDIA_TOKEN] * (item.n_tokens // 2))
            raise RuntimeError("scripted image failure")
        self.kv[seq].extend([MEDIA_TOKEN] * item.n_tokens)
        return pos + item.n_tokens

    def new_sampler(self, spec: SamplingParams, prompt: Sequence[int]) -> ScriptedSampler:
        sampler = ScriptedSampler(self, self.reply(prompt))
        self.samplers.append(sampler)
        return sampler

    def free(self) -> None:
        self.freed += 1


class ScriptedEmbedder:
    """Stands in for `EmbeddingContext`: a text's vector is its byte histogram folded into
    `n_embd` buckets and normalised, so equal texts embed equally and different ones differ."""

    def __init__(self, n_ctx: int, n_embd: int = 8) -> None:
        self.n_ctx = n_ctx
        self.n_embd = n_embd

    def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(inputs), self.n_embd), dtype=np.float32)
        for row, tokens in enumerate(inputs):
            for tok in tokens:
                out[row, tok % self.n_embd] += 1.0
            norm = float(np.linalg.norm(out[row]))
            if norm:
                out[row] /= norm
        return out


class ScriptedModel(ScriptedBackend):
    """A ScriptedBackend that also stands in for `LoadedModel` where the service opens one.

    Its vocabulary is the 256 byte values (plus the end token 0), it has no chat template (the
    plain transcript is used), it accepts every grammar without enforcing it, and each reply
    is `script(prompt)`: subclass and override it to script the answers.
    `opened` (a class-level gate) holds every open until set, to line loads up with swaps.
    """

    opened = threading.Event()
    instances: list[ScriptedModel] = []
    projector = None  # no vision
    n_vocab = 256

    def __init__(
        self, path: str, *, model_id: str, n_seq: int, n_batch: int, n_ctx_seq: int = 512,
        **_: object,
    ) -> None:
        if not ScriptedModel.opened.wait(20):
            raise TimeoutError("the test never released the load")
        super().__init__(n_seq=n_seq, n_batch=n_batch, n_ctx_seq=n_ctx_seq, reply=self.script)
        ScriptedModel.instances.append(self)
        self.path = path
        self.bos_text = self.eos_text = ""
        self.grammars: list[str] = []  # every grammar a request asked to compile
        self.info = ModelInfo(
            id=model_id,
            path=path,
            size_bytes=0,
            n_params=0,
            n_ctx_train=self.n_ctx_seq,
            n_ctx_seq=self.n_ctx_seq,
            n_seq=n_seq,
            chat_template=None,
            description="scripted",
            version=_.get("version"),  # type: ignore[arg-type]
        )

    def script(self, prompt: Sequence[int]) -> bytes:
        """The reply to `prompt` (token ids, i.e. its bytes)."""
        return b"ok"

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def grammar_compiles(self, grammar: str) -> bool:
        self.grammars.append(grammar)
        return bool(grammar.strip())

    def embedder(self, n_threads: int, pooling: str) -> ScriptedEmbedder:
        return ScriptedEmbedder(self.n_ctx_seq)
