"""Log-probabilities: the numbers (log-softmax over the raw logits) and OpenAI's shapes."""

from __future__ import annotations

import math

import numpy as np

from edgecloud.node.logprobs import (
    TokenLogprob,
    chat_logprobs_content,
    completion_logprobs,
    token_logprob,
    within_text,
)

PIECES = {0: b"Hel", 1: b"lo", 2: b" w", 3: b"\xe4", 4: b""}


def piece(tok: int) -> bytes:
    return PIECES[tok]


def test_log_softmax_matches_a_float64_reference() -> None:
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal(262_144) * 4).astype(np.float32)
    chosen = int(rng.integers(0, logits.size))
    got = token_logprob(logits, chosen, 20)
    ref = logits.astype(np.float64)
    ref = ref - ref.max()
    ref = ref - math.log(np.exp(ref).sum())
    assert abs(got.logprob - ref[chosen]) < 1e-4
    assert [t for t, _ in got.top] == list(np.argsort(-ref)[:20])
    lps = [lp for _, lp in got.top]
    assert lps == sorted(lps, reverse=True)
    assert sum(math.exp(lp) for lp in lps) <= 1.0
    assert abs(lps[0] - ref.max()) < 1e-4


def test_impossible_tokens_report_a_floor_not_minus_infinity() -> None:
    logits = np.array([0.0, -np.inf, 1.0], dtype=np.float32)
    got = token_logprob(logits, 1, 3)
    assert got.logprob == -9999.0 and got.top[-1] == (1, -9999.0)


def test_shapes() -> None:
    entries = [TokenLogprob(0, -0.1, ((0, -0.1), (2, -2.5))), TokenLogprob(1, -0.2, ((1, -0.2),))]
    (first, second) = chat_logprobs_content(entries, piece)
    assert first == {
        "token": "Hel",
        "logprob": -0.1,
        "bytes": list(b"Hel"),
        "top_logprobs": [
            {"token": "Hel", "logprob": -0.1, "bytes": list(b"Hel")},
            {"token": " w", "logprob": -2.5, "bytes": list(b" w")},
        ],
    }
    assert second["token"] == "lo"
    comp = completion_logprobs(entries, piece, text_offset=5)
    assert comp == {
        "tokens": ["Hel", "lo"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"Hel": -0.1, " w": -2.5}, {"lo": -0.2}],
        "text_offset": [5, 8],
    }
    # A partial UTF-8 byte keeps its exact bytes beside a replacement character.
    (odd,) = chat_logprobs_content([TokenLogprob(3, -1.0)], piece)
    assert odd["bytes"] == [0xE4] and odd["token"] == "\ufffd"


def test_entries_past_the_answer_are_dropped() -> None:
    entries = [TokenLogprob(t, -1.0) for t in (0, 1, 2, 4)]
    assert [e.token for e in within_text(entries, piece, len(b"Hello"))] == [0, 1]
    assert [e.token for e in within_text(entries, piece, len(b"Hello w"))] == [0, 1, 2]
