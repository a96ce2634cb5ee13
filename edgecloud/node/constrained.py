"""Grammar-constrained sampling on llama.cpp logits, without scoring the whole vocabulary.

llama.cpp's grammar sampler costs ~0.1 s per call on a 262k-token vocabulary (Gemma 3): it
walks every candidate through the grammar's stacks. So the candidates are the `TIERS[0]` most
likely tokens (plus the end-of-generation tokens, which a finished grammar needs), and only when
the grammar rejects them all the next tier, then the whole vocabulary. The rest of the chain
(penalties, top-p, min-p, temperature, then a seeded draw or greedy) runs on what the grammar
allowed, so the token drawn is always one the grammar accepts.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp as ll
import numpy as np
import numpy.typing as npt

TIERS = (64, 4096)
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarError(Exception):
    """llama.cpp refused the grammar (the message is in its log)."""


def grammar_compiles(vocab: ll.llama_vocab_p, grammar: str) -> bool:
    """Whether llama.cpp parses `grammar` (and finds no left recursion)."""
    smpl = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not smpl:
        return False
    ll.llama_sampler_free(smpl)
    return True


class GrammarSampler:
    """One sequence's grammar plus the sampler chain that draws among what it allows.

    Owns both llama.cpp samplers; call `free()` when the request ends.
    """

    def __init__(
        self,
        vocab: ll.llama_vocab_p,
        grammar: str,
        chain: ll.llama_sampler_p,
        eog_ids: Sequence[int],
    ) -> None:
        smpl = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not smpl:
            ll.llama_sampler_free(chain)
            raise GrammarError("llama.cpp could not parse the grammar")
        self.grammar: ll.llama_sampler_p | None = smpl
        self.chain: ll.llama_sampler_p | None = chain
        self._eog = np.asarray(sorted(set(eog_ids)), dtype=np.int32)
        self._buf = np.zeros(TIERS[-1] + len(self._eog), dtype=_TOKEN_DATA)
        self._full: npt.NDArray[np.void] | None = None

    def sample(self, logits: npt.NDArray[np.float32]) -> int:
        """Draw the next token from raw logits (n_vocab floats); -1 when the grammar allows none."""
        n_vocab = logits.shape[0]
        for k in TIERS:
            if k >= n_vocab:
                break
            ids = np.argpartition(logits, -k)[-k:]
            ids = np.union1d(ids, self._eog) if self._eog.size else ids
            arr = self._buf[: ids.size]
            arr["id"] = ids
            arr["logit"] = logits[ids]
            arr["p"] = 0.0
            tok = self._draw(arr)
            if tok >= 0:
                return tok
        if self._full is None or self._full.size != n_vocab:
            self._full = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._full["id"] = np.arange(n_vocab, dtype=np.int32)
        full = self._full
        full["logit"] = logits
        full["p"] = 0.0
        return self._draw(full)

    def _draw(self, arr: npt.NDArray[np.void]) -> int:
        assert self.grammar is not None and self.chain is not None, "sampler used after free()"
        data = arr.ctypes.data_as(ll.llama_token_data_p)
        cur = ll.llama_token_data_array(data=data, size=arr.size, selected=-1, sorted=False)
        ll.llama_sampler_apply(self.grammar, ctypes.byref(cur))
        if not np.isfinite(arr["logit"]).any():
            return -1
        ll.llama_sampler_apply(self.chain, ctypes.byref(cur))
        if cur.selected < 0 or cur.selected >= cur.size:
            return -1
        tok = int(cur.data[cur.selected].id)
        ll.llama_sampler_accept(self.grammar, tok)
        ll.llama_sampler_accept(self.chain, tok)
        return tok

    def free(self) -> None:
        if self.grammar:
            ll.llama_sampler_free(self.grammar)
            self.grammar = None
        if self.chain:
            ll.llama_sampler_free(self.chain)
            self.chain = None


def logits_at(ctx: ll.llama_context_p, index: int, n_vocab: int) -> npt.NDArray[np.float32]:
    """A view (no copy) of the logits of batch position `index`; valid until the next decode."""
    ptr = ll.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))
