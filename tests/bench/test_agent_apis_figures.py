"""The agent APIs' README tables come from the result file's figures."""

from __future__ import annotations

from edgecloud.testing.figures_tables import agent_apis


def test_ratios_and_differences_are_computed_from_the_result() -> None:
    gateway = {k: {"wall_p50_ms": 0.2, "added_p50_ms": 0.05}
               for k in ("chat", "chat-stream", "responses-stream", "messages",
                         "messages-stream", "embeddings")}
    gateway["responses"] = {"wall_p50_ms": 0.25, "added_p50_ms": 0.07}
    doc = {"summary": {
        "node": {"1": {"chat": 10.0, "responses": 9.7, "messages": 10.2}},
        "gateway": gateway,
        "embeddings": {"edgecloud": 50.0, "llama-server": None, "batch": 16}}}
    text = agent_apis(doc)
    assert "| 1 | 10.0 | 9.7 | **0.97x** | 10.2 | **1.02x** |" in text
    assert "| Responses, whole | 0.250 | +0.050 | 0.070 | +0.020 |" in text
    assert "| mean pooling, same model | – | 50.0 | – |" in text  # no peer, no ratio
