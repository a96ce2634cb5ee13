"""Log-probabilities of generated tokens, computed as llama.cpp's server does, in OpenAI's shapes.

The probability of a token is the softmax of the model's raw logits over the whole vocabulary,
before any sampler (temperature, top-k/p, penalties, grammar) touches them; llama-server reports
the same numbers (`n_probs` without `post_sampling_probs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# JSON has no -inf; OpenAI reports impossible tokens at this floor.
LOGPROB_FLOOR = -9999.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the `k` most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: npt.NDArray[np.float32], chosen: int, k: int) -> TokenLogprob:
    """Log-softmax of `logits` at `chosen`, and the top `k` (id, logprob) pairs, best first."""
    x = logits.astype(np.float32, copy=False)
    peak = float(x.max())
    log_z = peak + float(np.log(np.exp(x - peak, dtype=np.float32).sum(dtype=np.float32)))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, x.shape[0])
        idx = np.argpartition(-x, k - 1)[:k]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        top = tuple((int(i), _finite(float(x[i]) - log_z)) for i in idx)
    return TokenLogprob(chosen, _finite(float(x[chosen]) - log_z), top)


def _finite(v: float) -> float:
    return v if v > LOGPROB_FLOOR else LOGPROB_FLOOR


Piece = Callable[[int], bytes]


def _token_text(piece: Piece, token: int) -> tuple[str, list[int]]:
    raw = piece(token)
    return raw.decode("utf-8", "replace"), list(raw)


def chat_logprobs_content(entries: Sequence[TokenLogprob], piece: Piece) -> list[dict[str, Any]]:
    """Entries of a chat answer's `logprobs.content` (or one streamed chunk's)."""
    out = []
    for e in entries:
        text, raw = _token_text(piece, e.token)
        top = []
        for tok, lp in e.top:
            t_text, t_raw = _token_text(piece, tok)
            top.append({"token": t_text, "logprob": lp, "bytes": t_raw})
        out.append({"token": text, "logprob": e.logprob, "bytes": raw, "top_logprobs": top})
    return out


def completion_logprobs(
    entries: Sequence[TokenLogprob], piece: Piece, text_offset: int = 0
) -> dict[str, Any]:
    """A completion choice's `logprobs`: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens: list[str] = []
    offsets: list[int] = []
    tops: list[dict[str, float]] = []
    pos = text_offset
    for e in entries:
        text, _ = _token_text(piece, e.token)
        tokens.append(text)
        offsets.append(pos)
        pos += len(text)
        top: dict[str, float] = {}
        for tok, lp in e.top:
            top.setdefault(_token_text(piece, tok)[0], lp)
        tops.append(top)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def within_text(entries: Sequence[TokenLogprob], piece: Piece, n_bytes: int) -> list[TokenLogprob]:
    """The entries whose token starts inside the first `n_bytes` of output (a stop string or
    an end-of-generation token cut the rest)."""
    out = []
    pos = 0
    for e in entries:
        if pos >= n_bytes:
            break
        out.append(e)
        pos += len(piece(e.token))
    return out
