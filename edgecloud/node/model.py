"""One GGUF model loaded into llama.cpp: weights, a multi-sequence context, tokenizer, template.

`LoadedModel` is the llama.cpp implementation of the engine's `EngineBackend` (node/backend.py):
every llama.cpp call the engine makes is a method here. Only the engine thread decodes;
tokenisation and detokenisation only read the vocabulary and are safe from any thread.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as ll

from edgecloud.node.backend import PENALTY_LAST_N, MediaEvaluator, MediaItem, SamplingParams
from edgecloud.node.constrained import GrammarSampler, grammar_compiles, logits_at
from edgecloud.node.embeddings import EmbeddingContext
from edgecloud.node.kernels import load_cpu_variants
from edgecloud.node.logprobs import TokenLogprob, token_logprob

_backend_lock = threading.Lock()
_backend_ready = False


class ModelLoadError(Exception):
    """The GGUF file could not be loaded (missing, corrupt, or not a model llama.cpp reads)."""


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            # First: a portable build registers its CPU kernels from llama_cpp/lib, so that
            # llama_backend_init does not go looking for them in the working directory.
            load_cpu_variants()
            ll.llama_backend_init()
            _quiet_llama_logs()
            _backend_ready = True


@ll.llama_log_callback
def _drop_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp logs every tensor at load; our own structured log says what matters.
    return None


def _quiet_llama_logs() -> None:
    if os.environ.get("EDGECLOUD_LLAMA_LOG") != "1":
        ll.llama_log_set(_drop_log, ctypes.c_void_p(0))


@dataclass
class ModelInfo:
    """What we know about a loaded model, for /v1/models, /admin/model and metrics."""

    id: str
    path: str
    size_bytes: int
    n_params: int
    n_ctx_train: int
    n_ctx_seq: int
    n_seq: int
    chat_template: str | None
    description: str
    version: str | None = None
    sha256: str | None = None
    loaded_at: float = field(default_factory=time.time)


# The longest text one token may stand for: pieces are read into buffers this size (longer
# ones would not render), so a prompt of B bytes is at least B / MAX_PIECE_BYTES tokens.
MAX_PIECE_BYTES = 256


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class LoadedModel:
    """llama.cpp model + context with `n_seq` independent sequences of `n_ctx_seq` tokens each."""

    def __init__(
        self,
        path: str,
        *,
        model_id: str,
        n_seq: int,
        n_ctx_seq: int,
        n_threads: int,
        n_batch: int = 512,
        version: str | None = None,
    ) -> None:
        if n_seq > n_batch:
            # llama.cpp aborts the process on this (a batch must hold one token per sequence).
            raise ModelLoadError(f"parallel ({n_seq}) must not exceed batch ({n_batch})")
        if not os.path.isfile(path):
            raise ModelLoadError(f"model file not found: {path}")
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelLoadError(f"not a GGUF file (bad magic): {path}")
        _init_backend()
        mparams = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load the model: {path}")
        n_ctx_train = int(ll.llama_model_n_ctx_train(self.model))
        n_ctx_seq = max(64, min(n_ctx_seq, n_ctx_train))
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx_seq * n_seq
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        # One KV stream per sequence: requests do not share a prefix, and separate streams are
        # faster for independent sequences (llama.cpp PR 14363).
        cparams.kv_unified = False
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ModelLoadError(f"llama.cpp could not create a context for {path}")
        self.memory = ll.llama_get_memory(self.ctx)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.n_swa = int(ll.llama_model_n_swa(self.model))  # 0: no sliding-window layers
        self.n_seq = n_seq
        self.n_batch = n_batch
        self.n_ctx_seq = int(ll.llama_n_ctx_seq(self.ctx)) or n_ctx_seq
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self.vocab))
        self.bos_text = self._piece_text(ll.llama_vocab_bos(self.vocab))
        self.eos_text = self._piece_text(ll.llama_vocab_eos(self.vocab))
        self._batch: Any = ll.llama_batch_init(n_batch, 0, 1)
        self.projector: MediaEvaluator | None = None  # set by vision.load_projector
        self._embedder: EmbeddingContext | None = None  # made on the first embeddings request
        self._embedder_lock = threading.Lock()
        self._pieces: dict[int, bytes] = {}
        self._grammars: dict[bytes, bool] = {}
        self._piece_buf = ctypes.create_string_buffer(MAX_PIECE_BYTES)
        template = ll.llama_model_chat_template(self.model, None)
        desc = ctypes.create_string_buffer(256)
        ll.llama_model_desc(self.model, desc, ctypes.sizeof(desc))
        self.info = ModelInfo(
            id=model_id,
            path=os.path.abspath(path),
            size_bytes=os.path.getsize(path),
            n_params=int(ll.llama_model_n_params(self.model)),
            n_ctx_train=n_ctx_train,
            n_ctx_seq=self.n_ctx_seq,
            n_seq=n_seq,
            chat_template=template.decode("utf-8", "replace") if template else None,
            description=desc.value.decode("utf-8", "replace"),
            version=version,
        )

    # -- tokens ---------------------------------------------------------------------------
    def tokenize(
        self, text: str, *, add_bos: bool | None = None, special: bool = True
    ) -> list[int]:
        """Text to token ids; `special` parses control tokens written in templates."""
        data = text.encode("utf-8")
        bos = self.add_bos if add_bos is None else add_bos
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, bos, special)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, bos, special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """Bytes of one token (control tokens render as nothing); cached per id."""
        cached = self._pieces.get(token)
        if cached is None:
            n = ll.llama_token_to_piece(
                self.vocab, token, self._piece_buf, MAX_PIECE_BYTES, 0, False
            )
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    def _piece_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = ll.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    @functools.cached_property
    def eog_ids(self) -> tuple[int, ...]:
        """Every end-of-generation token id (a finished grammar allows only these)."""
        return tuple(t for t in range(self.n_vocab) if ll.llama_vocab_is_eog(self.vocab, t))

    def grammar_compiles(self, grammar: str) -> bool:
        """Whether llama.cpp accepts `grammar` (checked before a request is queued)."""
        key = hashlib.sha256(grammar.encode()).digest()
        ok = self._grammars.get(key)
        if ok is None:
            ok = grammar_compiles(self.vocab, grammar)
            if len(self._grammars) >= 256:
                self._grammars.clear()
            self._grammars[key] = ok
        return ok

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    # -- the engine's backend (EngineBackend) ---------------------------------------------
    def keep_prefix(self, seq: int, n_keep: int) -> int:
        if self.n_swa > 0:
            # Sliding-window layers keep only the last n_swa positions: the new tokens need
            # the window before n_keep, which may already be gone.
            pos_min = ll.llama_memory_seq_pos_min(self.memory, seq)
            if pos_min > max(0, n_keep - self.n_swa):
                return 0
        if not ll.llama_memory_seq_rm(self.memory, seq, n_keep, -1):
            return 0
        return n_keep

    def clear_seq(self, seq: int) -> None:
        ll.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def clear_memory(self) -> None:
        ll.llama_memory_clear(self.memory, True)

    def put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def put_run(self, i: int, tokens: Sequence[int], pos: int, seq: int, logits_last: bool) -> None:
        batch = self._batch
        b_token, b_pos, b_nseq, b_seq, b_logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        for tok in tokens:
            b_token[i] = tok
            b_pos[i] = pos
            b_nseq[i] = 1
            b_seq[i][0] = seq
            b_logits[i] = False
            i += 1
            pos += 1
        if logits_last and tokens:
            b_logits[i - 1] = True

    def decode(self, n_tokens: int) -> int:
        if not 0 < n_tokens <= self.n_batch:  # never write or read past the batch
            raise ValueError(f"batch of {n_tokens} tokens; the limit is {self.n_batch}")
        self._batch.n_tokens = n_tokens
        return int(ll.llama_decode(self.ctx, self._batch))

    def new_sampler(self, spec: SamplingParams, prompt: Sequence[int]) -> LlamaSampler:
        return LlamaSampler(self, spec, prompt)

    def eval_media(self, seq: int, pos: int, item: MediaItem) -> int:
        if self.projector is None:
            raise RuntimeError("this model has no projector")
        return self.projector.evaluate(item, seq, pos, self.n_batch)

    def embedder(self, n_threads: int, pooling: str) -> EmbeddingContext:
        """The embedding-mode context on these weights, made once (thread-safe)."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = EmbeddingContext(self.model, self.n_ctx_seq, n_threads, pooling)
            return self._embedder

    def free(self) -> None:
        embedder = getattr(self, "_embedder", None)
        if embedder is not None:
            embedder.free()  # before the weights it reads
            self._embedder = None
        projector = getattr(self, "projector", None)
        if projector is not None:
            projector.free()  # before the model it was loaded for
            self.projector = None
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "ctx", None):
            ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            ll.llama_model_free(self.model)
            self.model = None


class LlamaSampler:
    """One request's llama.cpp sampler chain, built from its `SamplingParams`, with its extras:
    a grammar the output must match (GrammarSampler, which then owns the chain) and the
    log-probabilities of each chosen token.
    """

    __slots__ = ("chain", "constrained", "ctx", "logprobs", "n_vocab")

    def __init__(self, model: LoadedModel, p: SamplingParams, prompt: Sequence[int]) -> None:
        self.ctx = model.ctx
        self.n_vocab = model.n_vocab
        self.logprobs = p.logprobs
        self.chain: Any = _sampler_chain(model.n_vocab, p, prompt, model.eog_ids)
        self.constrained: GrammarSampler | None = None
        if p.grammar is not None:
            self.constrained = GrammarSampler(model.vocab, p.grammar, self.chain, model.eog_ids)
            self.chain = None  # the grammar sampler owns it now

    def sample(self, batch_index: int) -> int:
        if self.constrained is not None:
            return self.constrained.sample(logits_at(self.ctx, batch_index, self.n_vocab))
        return ll.llama_sampler_sample(self.chain, self.ctx, batch_index)  # type: ignore[no-any-return]

    def logprob(self, batch_index: int, token: int) -> TokenLogprob | None:
        if self.logprobs is None:
            return None
        logits = logits_at(self.ctx, batch_index, self.n_vocab)
        return token_logprob(logits, token, self.logprobs)

    def free(self) -> None:
        if self.chain is not None:
            ll.llama_sampler_free(self.chain)
            self.chain = None
        if self.constrained is not None:
            self.constrained.free()
            self.constrained = None


def _sampler_chain(
    n_vocab: int, p: SamplingParams, prompt: Sequence[int], eog_ids: Sequence[int] = ()
) -> Any:
    """[no end tokens] -> top-k -> penalties -> top-p -> min-p -> temperature -> draw or greedy."""
    params = ll.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = ll.llama_sampler_chain_init(params)
    if p.ignore_eos and p.grammar is None and eog_ids:
        # As llama-server's ignore_eos: end-of-generation tokens get -inf (a grammar must end).
        biases = (ll.llama_logit_bias * len(eog_ids))(
            *(ll.llama_logit_bias(token=t, bias=float("-inf")) for t in eog_ids)
        )
        ll.llama_sampler_chain_add(
            chain, ll.llama_sampler_init_logit_bias(n_vocab, len(eog_ids), biases)
        )
    penalties = p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 or p.repeat_penalty != 1.0
    greedy = p.temperature <= 0.0
    if p.grammar is not None:
        # The grammar sampler hands the chain its own cut of the vocabulary (constrained.TIERS).
        if p.top_k:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
    elif penalties or not greedy:
        # Penalties scan their window per candidate: cut the 262k vocabulary down first.
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k or 64))
    if penalties:
        ll.llama_sampler_chain_add(
            chain,
            ll.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            ),
        )
        for tok in prompt[-PENALTY_LAST_N:]:
            if tok >= 0:  # not an image position
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
