"""Every client mistake gets a 4xx OpenAI error, and the node keeps serving."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
OK_MSG = [{"role": "user", "content": "hi"}]


def _post(node: str, path: str, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        node + path,
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=60,
    )


def _json(node: str, path: str, body: object) -> httpx.Response:
    return httpx.post(node + path, json=body, timeout=60)


def _assert_error(r: httpx.Response, status: int, words: str = "") -> dict[str, object]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert words.lower() in err["message"].lower()
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[1, 2, 3]",
        b'"just a string"',
        b"\xff\xfe\x00invalid utf-8",
        b"[" * 5000 + b"]" * 5000,
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e999}',
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        b'{"messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
)
def test_malformed_bodies_are_400(node: str, raw: bytes) -> None:
    _assert_error(_post(node, CHAT, raw), 400)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 12}]}, "messages.0.content"),
        ({"messages": OK_MSG, "temperature": "hot"}, "temperature"),
        ({"messages": OK_MSG, "temperature": 7}, "temperature"),
        ({"messages": OK_MSG, "top_p": 0}, "top_p"),
        ({"messages": OK_MSG, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": OK_MSG, "stream": "yes please"}, "stream"),
        ({"messages": OK_MSG, "stop": [""]}, "stop"),
        ({"messages": OK_MSG, "frequency_penalty": 3}, "frequency_penalty"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]}, None),
    ],
)
def test_wrong_fields_name_the_field(node: str, body: object, param: str | None) -> None:
    err = _assert_error(_json(node, CHAT, body), 400)
    if param is not None:
        assert err["param"] == param


def test_unknown_model_is_404(node: str) -> None:
    err = _assert_error(_json(node, CHAT, {"model": "gpt-9", "messages": OK_MSG}), 404, "gpt-9")
    assert err["code"] == "model_not_found"


@pytest.mark.parametrize("max_tokens", [0, -5, 10_000_000])
def test_max_tokens_out_of_range(node: str, max_tokens: int) -> None:
    err = _assert_error(_json(node, CHAT, {"messages": OK_MSG, "max_tokens": max_tokens}), 400)
    assert err["param"] == "max_tokens"


def test_prompt_longer_than_context_says_the_limits(node: str) -> None:
    long_text = "word " * 5000  # the test node runs with --ctx 2048
    r = _json(node, "/v1/completions", {"prompt": long_text, "max_tokens": 4})
    err = _assert_error(r, 400, "2048")
    assert err["code"] == "context_length_exceeded"


def test_a_prompt_too_long_to_fit_is_refused_unread_while_the_node_keeps_answering(
    node: str,
) -> None:
    import concurrent.futures

    huge = {"messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}], "max_tokens": 1}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _json(node, "/v1/chat/completions", huge), range(8)))
        # Tokenising 2 MB took seconds on the event loop: health checks stalled behind it.
        assert httpx.get(f"{node}/healthz", timeout=30).status_code == 200
    for r in answers:
        assert _assert_error(r, 400, "2048")["code"] == "context_length_exceeded"


def test_body_over_the_limit_is_413(node: str) -> None:
    big = b'{"prompt": "' + b"a" * (11 * 1024 * 1024) + b'"}'
    _assert_error(_post(node, "/v1/completions", big), 413)


def test_image_parts_are_refused_by_a_text_model(node: str) -> None:
    msg = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is on the screen?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    err = _assert_error(_json(node, CHAT, {"messages": msg}), 400, "vision")
    assert err["code"] == "model_not_vision"


def test_n_greater_than_one_is_refused(node: str) -> None:
    _assert_error(_json(node, CHAT, {"messages": OK_MSG, "n": 3}), 400, "n > 1")


def test_wrong_method_and_unknown_route(node: str) -> None:
    _assert_error(httpx.get(node + CHAT), 405)
    _assert_error(httpx.get(node + "/v1/nothing-here"), 404)
    _assert_error(httpx.get(node + "/admin/model"), 404, "admin api is off")


def test_still_serving_after_all_that(node: str) -> None:
    r = _json(node, CHAT, {"messages": OK_MSG, "max_tokens": 3})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    "extra",
    [
        {"stop": "x" * 5000},
        {"top_k": 10**12},
        {"seed": 10**30},
        {"max_tokens": 1.5},
        {"n": 0},
    ],
)
def test_out_of_range_values_are_400(node: str, extra: dict[str, object]) -> None:
    _assert_error(_json(node, CHAT, {"messages": OK_MSG, **extra}), 400)


def test_odd_but_valid_requests_are_served(node: str) -> None:
    for body in (
        {"messages": OK_MSG, "max_tokens": 2, "seed": -1, "stop": None, "n": 1, "user": "u1"},
        {"messages": [{"role": "assistant", "content": None}, *OK_MSG], "max_tokens": 2},
        {"messages": OK_MSG, "max_tokens": 2, "stream_options": {"include_usage": True}},
        {"messages": OK_MSG, "max_tokens": 2, "response_format": {"type": "text"}, "tools": []},
    ):
        r = _json(node, CHAT, body)
        assert r.status_code == 200, (body, r.text)
    r = httpx.post(
        node + "/v1/completions",
        content=b'{"prompt": [1, 2, 3], "max_tokens": 2}',
        headers={"content-type": "text/plain"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
