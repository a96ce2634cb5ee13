"""Run text through llama.cpp's grammar sampler token by token: does the grammar accept it?"""

from __future__ import annotations

import ctypes

import llama_cpp as ll
import numpy as np

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class Vocab:
    """A model's vocabulary only (no weights): enough to parse grammars and tokenize."""

    def __init__(self, path: str) -> None:
        ll.llama_backend_init()
        params = ll.llama_model_default_params()
        params.vocab_only = True
        self.model = ll.llama_model_load_from_file(path.encode(), params)
        assert self.model
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.eos = int(ll.llama_vocab_eos(self.vocab))

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (ll.llama_token * (len(data) + 8))()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        assert n >= 0
        return list(buf[:n])

    def accepts(self, grammar: str, text: str, *, complete: bool = True) -> bool:
        """True when every token of `text` is allowed in turn (and then the end, if `complete`)."""
        smpl = ll.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert smpl, "grammar does not compile"
        try:
            for tok in self.tokenize(text):
                if not self._allowed(smpl, tok):
                    return False
                ll.llama_sampler_accept(smpl, tok)
            return self._allowed(smpl, self.eos) if complete else True
        finally:
            ll.llama_sampler_free(smpl)

    @staticmethod
    def _allowed(smpl: ll.llama_sampler_p, tok: int) -> bool:
        arr = np.zeros(1, dtype=_TOKEN_DATA)
        arr["id"] = tok
        cur = ll.llama_token_data_array(
            data=arr.ctypes.data_as(ll.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        ll.llama_sampler_apply(smpl, ctypes.byref(cur))
        return bool(np.isfinite(arr["logit"][0]))
