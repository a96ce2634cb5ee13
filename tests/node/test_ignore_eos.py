"""`ignore_eos` (llama-server's and vLLM's field): the answer runs to max_tokens, so two servers
in a benchmark do equal work."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("prompt", ["The end.", "Q: What is 2+2?\nA: 4", "<eos>"])
def test_ignore_eos_runs_every_answer_to_max_tokens(node: str, prompt: str) -> None:
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    out = httpx.post(node + "/v1/completions", json=body, timeout=60).json()
    assert out["usage"]["completion_tokens"] == 24
    assert out["choices"][0]["finish_reason"] == "length"


def test_ignore_eos_must_be_a_boolean(node: str) -> None:
    body = {"prompt": "x", "max_tokens": 2, "ignore_eos": {"yes": 1}}
    r = httpx.post(node + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "ignore_eos"
