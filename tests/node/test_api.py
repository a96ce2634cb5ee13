"""The node's OpenAI API, through the real OpenAI SDK and raw HTTP, on the embedded model."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(node: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node}/v1", api_key="unused", max_retries=0)


def _ask(client: openai.OpenAI, content: object, **kw: Any) -> Any:
    """One user message to the served model (kw: the other request fields)."""
    return client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": content}], **kw
    )


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["gemma-3-270m"]


def test_chat_completion_non_streaming(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name a colour."},
        ],
        max_tokens=8,
        temperature=0,
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_completion_is_deterministic_at_temperature_zero(client: openai.OpenAI) -> None:
    kwargs = dict(model="gemma-3-270m", prompt="The capital of France is", max_tokens=12)
    a = client.completions.create(temperature=0, **kwargs)  # type: ignore[call-overload]
    b = client.completions.create(temperature=0, **kwargs)  # type: ignore[call-overload]
    assert a.choices[0].text == b.choices[0].text
    assert a.usage is not None and a.usage.completion_tokens == 12
    assert a.choices[0].finish_reason == "length"


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    kwargs = dict(
        model="gemma-3-270m",
        prompt="Once upon a time",
        max_tokens=16,
        temperature=0.9,
        top_p=0.9,
        seed=42,
        frequency_penalty=0.5,
        presence_penalty=0.2,
    )
    a = client.completions.create(**kwargs)  # type: ignore[call-overload]
    b = client.completions.create(**kwargs)  # type: ignore[call-overload]
    assert a.choices[0].text == b.choices[0].text


def test_stop_sequence_ends_the_text(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model="gemma-3-270m", prompt="1, 2, 3, 4,", max_tokens=40, temperature=0, stop=[" 8"]
    )
    text = resp.choices[0].text
    assert resp.choices[0].finish_reason == "stop"
    assert " 8" not in text
    assert text.strip().startswith("5")


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = _ask(
        client,
        "Count: one, two, three,",
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens >= 1
    assert len(text) > 0


def test_completion_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    args = dict(model="gemma-3-270m", prompt="The sky is", max_tokens=16, temperature=0)
    full = client.completions.create(**args).choices[0].text  # type: ignore[call-overload]
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(stream=True, **args)  # type: ignore[call-overload]
        if c.choices
    )
    assert streamed == full


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    resp = _ask(client, "Tell me a long story.", max_completion_tokens=5, temperature=0)
    assert resp.usage is not None and resp.usage.completion_tokens <= 5


def test_extra_body_fields_are_accepted(client: openai.OpenAI) -> None:
    resp = _ask(
        client,
        [{"type": "text", "text": "Hello"}],
        max_tokens=4,
        extra_body={"skip_special_tokens": False, "top_k": 20},
    )
    assert resp.choices[0].message.content is not None


def test_health_ready_and_metrics_move(node: str) -> None:
    assert httpx.get(f"{node}/healthz").status_code == 200
    ready = httpx.get(f"{node}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True

    def counter(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = httpx.get(f"{node}/metrics").text
    httpx.post(f"{node}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60)
    after = httpx.get(f"{node}/metrics").text
    ok = 'edgecloud_node_requests_total{route="/v1/completions",status="200"}'
    assert counter(after, ok) == counter(before, ok) + 1
    assert counter(after, "edgecloud_node_output_tokens_total") >= (
        counter(before, "edgecloud_node_output_tokens_total") + 1
    )
    assert counter(after, "edgecloud_node_ttft_seconds_count") == (
        counter(before, "edgecloud_node_ttft_seconds_count") + 1
    )
    assert counter(after, "edgecloud_node_model_load_seconds") > 0
    assert counter(after, "process_resident_memory_bytes") > 0


def test_long_prompt_is_read_in_chunks(client: openai.OpenAI) -> None:
    # ~1,500 tokens: more than one llama_decode batch (512), less than the 2,048 context.
    prompt = "The quick brown fox jumps over the lazy dog. " * 150
    resp = client.completions.create(
        model="gemma-3-270m", prompt=prompt, max_tokens=8, temperature=0
    )
    assert resp.usage is not None
    assert 1000 < resp.usage.prompt_tokens < 2048
    assert resp.usage.completion_tokens >= 1


def test_a_conversation_reuses_its_cached_prefix_and_answers_the_same(node: str) -> None:
    history = [
        {"role": "system", "content": "You are a phone agent. " * 20},
        {"role": "user", "content": "Open the settings app and find the battery page."},
    ]
    body = {"messages": history, "max_tokens": 12, "temperature": 0}
    # Cold: a fresh node-wide prompt (the unique suffix keeps other tests' caches out).
    first = httpx.post(f"{node}/v1/chat/completions", json=body, timeout=60).json()
    again = httpx.post(f"{node}/v1/chat/completions", json=body, timeout=60).json()
    assert again["choices"][0]["message"] == first["choices"][0]["message"]
    cached = again["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
    assert cached == again["usage"]["prompt_tokens"] - 1
    # The next turn keeps the history and adds to it: only the new tokens are read.
    turn2 = {
        **body,
        "messages": [
            *history,
            first["choices"][0]["message"],
            {"role": "user", "content": "Now turn on battery saver."},
        ],
    }
    second = httpx.post(f"{node}/v1/chat/completions", json=turn2, timeout=60).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 100
