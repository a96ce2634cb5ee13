"""Embeddings from the loaded model: a second llama.cpp context in embedding mode.

It shares the model's weights with the generation context but not its slots: an embedding is
one forward pass with no sampling, so it does not wait for a generation slot. Several inputs
go into one llama_decode call (one sequence each); the pooled vector of each sequence is read
back and L2-normalised, as OpenAI's and llama-server's are. Calls are serialised by a lock and
run on a worker thread (never on the event loop).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import Any

import llama_cpp as ll
import numpy as np

POOLING = {"mean": ll.LLAMA_POOLING_TYPE_MEAN, "last": ll.LLAMA_POOLING_TYPE_LAST,
           "cls": ll.LLAMA_POOLING_TYPE_CLS}
_MAX_SEQS = 16


class EmbeddingError(Exception):
    """llama.cpp could not create the context or compute an embedding."""


class EmbeddingContext:
    """An embedding-mode context on a loaded model (`model_ptr`), `n_ctx` tokens per call."""

    def __init__(self, model_ptr: Any, n_ctx: int, n_threads: int, pooling: str) -> None:
        cparams = ll.llama_context_default_params()
        cparams.embeddings = True
        cparams.pooling_type = POOLING[pooling]
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = n_ctx  # a pooled sequence must fit one micro-batch
        cparams.n_seq_max = _MAX_SEQS
        cparams.kv_unified = True  # sequences of one call share the n_ctx cells
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(model_ptr, cparams)
        if not self.ctx:
            raise EmbeddingError("llama.cpp could not create an embedding context")
        self.memory = ll.llama_get_memory(self.ctx)
        self.n_ctx = n_ctx
        self.n_embd = int(ll.llama_model_n_embd(model_ptr))
        self._batch: Any = ll.llama_batch_init(n_ctx, 0, 1)
        self._lock = threading.Lock()

    def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """One normalised vector per token sequence (each at most n_ctx tokens)."""
        out = np.empty((len(inputs), self.n_embd), dtype=np.float32)
        with self._lock:
            if self.ctx is None:
                raise EmbeddingError("the model was unloaded")
            group: list[int] = []
            used = 0
            for i, tokens in enumerate(inputs):
                if group and (used + len(tokens) > self.n_ctx or len(group) == _MAX_SEQS):
                    self._run(inputs, group, out)
                    group, used = [], 0
                group.append(i)
                used += len(tokens)
            if group:
                self._run(inputs, group, out)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=out, where=norms > 0)

    def _run(self, inputs: Sequence[Sequence[int]], group: list[int], out: np.ndarray) -> None:
        batch = self._batch
        n = 0
        for seq, i in enumerate(group):
            for pos, tok in enumerate(inputs[i]):
                batch.token[n] = tok
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        try:
            rc = int(ll.llama_decode(self.ctx, batch))
            if rc != 0:
                raise EmbeddingError(f"llama_decode returned {rc}")
            for seq, i in enumerate(group):
                ptr = ll.llama_get_embeddings_seq(self.ctx, seq)
                if not ptr:
                    raise EmbeddingError("no pooled embedding (the model's pooling is 'none')")
                out[i] = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                               shape=(self.n_embd,))
        finally:
            ll.llama_memory_clear(self.memory, True)

    def free(self) -> None:
        with self._lock:
            if self._batch is not None:
                ll.llama_batch_free(self._batch)
                self._batch = None
            if self.ctx:
                ll.llama_free(self.ctx)
                self.ctx = None
