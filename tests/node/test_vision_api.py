"""A vision node: the real embedded model with the generated projector, over HTTP.

The projector's weights are random, so the answers are nonsense; what is real is the path:
decode, resize, encode, embed, batch, generate, stream.
"""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from edgecloud.bench.workloads import png_bytes
from edgecloud.supervise import ManagedProcess
from tests.conftest import serve_node, start_node

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
ADMIN_TOKEN = "vision-test-admin-token"


def png_uri(seed: int, width: int = 1080, height: int = 2400, size: int = 200_000) -> str:
    data = png_bytes(seed, width, height, target_bytes=size)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_message(url: str, text: str = "What is on this screen?") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


LIMITS_YAML = """\
max_image_bytes: 1000000
max_request_image_bytes: 1500000
image_url_hosts: [127.0.0.1]
image_fetch_timeout_s: 5
"""


@pytest.fixture(scope="module")
def vision_node(tmp_path_factory: pytest.TempPathFactory, tiny_mmproj_path: str) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("vision-node")
    config = tmp / "node.yaml"
    config.write_text(LIMITS_YAML)
    yield from serve_node(
        tmp, "--config", str(config),
        "--mmproj", tiny_mmproj_path, "--parallel", "4", "--ctx", "1024",
        name="vision-node", ready_timeout_s=300,
    )  # fmt: skip


def test_models_list_vision(vision_node: str) -> None:
    model = httpx.get(vision_node + "/v1/models", timeout=30).json()["data"][0]
    assert model["meta"]["capabilities"] == ["text", "vision"]


def test_openai_sdk_screenshot_streamed_and_not(vision_node: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=vision_node + "/v1", api_key="unused", max_retries=0, timeout=300)
    messages: Any = [image_message(png_uri(1))]
    answer = client.chat.completions.create(
        model="gemma-3-270m", messages=messages, max_tokens=8, temperature=0
    )
    assert answer.usage is not None
    text_only = client.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "What is on this screen?"}],
        max_tokens=1,
    )
    assert text_only.usage is not None
    # The 64 image tokens of the projector count as prompt tokens (plus the image's markers).
    assert answer.usage.prompt_tokens >= text_only.usage.prompt_tokens + 64
    assert answer.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(
        model="gemma-3-270m",
        messages=messages,
        max_completion_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == answer.usage.prompt_tokens
    assert 1 <= usage.completion_tokens <= 8
    # llama-server's `timings` on the finishing chunk, with the image's own time.
    finishing = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    timings = (finishing.model_extra or {})["timings"]
    assert timings["images_n"] == 1 and 0 < timings["images_ms"] <= timings["prompt_ms"]
    assert timings["predicted_n"] == usage.completion_tokens
    assert timings["prompt_n"] + timings["cache_n"] == usage.prompt_tokens


def test_images_and_text_mixed_at_concurrency_4(vision_node: str) -> None:
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        if i % 2:
            messages = [image_message(png_uri(10 + i), f"Step {i}: what should I tap?")]
        else:
            messages = [{"role": "user", "content": f"Count from {i} to {i + 5}."}]
        body = {"messages": messages, "max_tokens": 6, "stream": True}
        finish = None
        with httpx.stream("POST", vision_node + CHAT, json=body, timeout=300) as r:
            status = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: {") and '"finish_reason":"' in line.replace(" ", ""):
                    finish = line.split('"finish_reason":"')[1].split('"')[0]
        with lock:
            results.append((status, finish))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for group in (threads[:4], threads[4:]):  # 4 in flight at a time
        for t in group:
            t.start()
        for t in group:
            t.join(300)
    assert len(results) == 8
    assert all(status == 200 and finish in ("stop", "length") for status, finish in results)


def test_text_before_the_first_image_is_reused(vision_node: str) -> None:
    system = {"role": "system", "content": "You operate a phone. " * 30}
    usages = []
    for seed in (21, 22):  # a new screenshot each step, as a phone agent sends
        body = {"messages": [system, image_message(png_uri(seed))], "max_tokens": 2}
        r = httpx.post(vision_node + CHAT, json=body, timeout=300)
        assert r.status_code == 200, r.text
        usages.append(r.json()["usage"])
        timings = r.json()["timings"]
        assert timings["cache_n"] == usages[-1].get("prompt_tokens_details", {}).get(
            "cached_tokens", 0)
        assert timings["images_n"] == 1 and timings["images_ms"] > 0
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] >= 150
    assert usages[1]["prompt_tokens_details"]["cached_tokens"] < usages[1]["prompt_tokens"] - 64


def test_stop_strings_and_max_completion_tokens(vision_node: str) -> None:
    body = {
        "messages": [image_message(png_uri(31))],
        "max_completion_tokens": 3,
        "stop": [" "],
    }
    r = httpx.post(vision_node + CHAT, json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    assert " " not in out["choices"][0]["message"]["content"]
    assert out["usage"]["completion_tokens"] <= 3


def test_a_client_that_leaves_mid_image_frees_its_slot(vision_node: str) -> None:
    for seed in (41, 42, 43, 44, 45):  # more than the 4 slots: a leaked slot would show
        body = {"messages": [image_message(png_uri(seed))], "max_tokens": 64, "stream": True}
        with httpx.stream("POST", vision_node + CHAT, json=body, timeout=300) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the role chunk, then hang up
    r = httpx.post(
        vision_node + CHAT, json={"messages": [image_message(png_uri(46))], "max_tokens": 2},
        timeout=300,
    )  # fmt: skip
    assert r.status_code == 200, r.text


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 200, 30)).save(buf, format=fmt)
    return buf.getvalue()


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 120001)) + chunk(b"IEND", b"")
    )  # fmt: skip


def _b64(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


BAD_IMAGES = [
    ("data:image/png;base64,!!!not-base64!!!", "invalid_image"),
    (_b64(b"definitely not an image, just bytes" * 20), "invalid_image"),
    (_b64(_encoded("PNG")[:60]), "invalid_image"),  # truncated
    ("", "invalid_image"),
    (_b64(_bomb()), "image_too_many_pixels"),
    ("https://example.com/screen.png", "image_url_not_allowed"),
    ("file:///etc/passwd", "invalid_image"),
]


@pytest.mark.parametrize(("url", "code"), BAD_IMAGES)
def test_bad_images_are_4xx_and_the_node_keeps_serving(
    vision_node: str, url: str, code: str
) -> None:
    r = httpx.post(
        vision_node + CHAT, json={"messages": [image_message(url)], "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["param"] == "messages.0.content.1.image_url"
    ok = httpx.post(
        vision_node + CHAT,
        json={"messages": [image_message(_b64(_encoded("JPEG"), "image/jpeg"))], "max_tokens": 1},
        timeout=300,
    )
    assert ok.status_code == 200, ok.text


def test_too_many_images_and_webp(vision_node: str) -> None:
    webp = _b64(_encoded("WEBP"), "image/webp")
    parts = [{"type": "image_url", "image_url": {"url": webp}} for _ in range(9)]
    body = {"messages": [{"role": "user", "content": parts}], "max_tokens": 1}
    r = httpx.post(vision_node + CHAT, json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"
    # Two images in two messages: each stands where its part is.
    body = {
        "messages": [image_message(webp, "first"), image_message(webp, "second")],
        "max_tokens": 1,
    }
    r = httpx.post(vision_node + CHAT, json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] >= 128


def test_hot_swap_with_and_without_projector(
    tmp_path: Path, tiny_mmproj_path: str, embedded_model_path: str
) -> None:
    proc, base = start_node(
        tmp_path, "--mmproj", tiny_mmproj_path, "--parallel", "2", "--ctx", "512",
        "--model-dir", str(Path(embedded_model_path).parent),
        "--model-dir", str(Path(tiny_mmproj_path).parent),
        env={"EDGECLOUD_ADMIN_TOKEN": ADMIN_TOKEN}, name="swap-node",
    )  # fmt: skip
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    image_body = {"messages": [image_message(_b64(_encoded("PNG")))], "max_tokens": 1}
    try:
        proc.wait_ready(timeout_s=300)
        with httpx.Client(base_url=base, timeout=300) as c:
            r = c.post("/admin/model", json={"path": embedded_model_path, "mmproj": None},
                       headers=auth)  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["capabilities"] == ["text"] and r.json()["mmproj"] is None
            r = c.post(CHAT, json=image_body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_vision"

            r = c.post(
                "/admin/model",
                json={"path": embedded_model_path, "mmproj": tiny_mmproj_path},
                headers=auth,
            )
            assert r.status_code == 200, r.text
            assert r.json()["capabilities"] == ["text", "vision"]
            assert c.post(CHAT, json=image_body).status_code == 200

            r = c.post("/admin/model", json={"path": embedded_model_path}, headers=auth)
            assert r.status_code == 200 and r.json()["capabilities"] == ["text", "vision"]
            r = c.post("/admin/model", json={"path": embedded_model_path, "mmproj": "/etc/hosts"},
                       headers=auth)  # fmt: skip
            assert r.status_code == 403 and r.json()["error"]["param"] == "mmproj"
            assert c.post(CHAT, json=image_body).status_code == 200
    finally:
        proc.stop()


def test_gateway_learns_vision_from_the_node(vision_node: str, tmp_path: Path) -> None:
    from tests.gateway.gwrig import endpoint, fast_limits, launch_gateway, launch_standin

    started: list[ManagedProcess] = []
    try:
        cloud = launch_standin(tmp_path, started, "cloud")
        edge = endpoint("edge-node", "edge", vision_node + "/v1")
        del edge["capabilities"]  # not configured: the node's /v1/models says
        config = {
            "endpoints": [edge, endpoint("cloud", "cloud", cloud.v1)],
            "limits": fast_limits(),
        }
        gw = launch_gateway(tmp_path, started, config)
        body = {"model": "auto", "messages": [image_message(png_uri(51))], "max_tokens": 2}
        deadline = time.monotonic() + 60
        while True:  # until the gateway's first probe of the node has read its /v1/models
            r = httpx.post(gw.v1 + "/chat/completions", json=body, timeout=300)
            if r.status_code != 400 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.headers["x-edgecloud-placement"] == "edge"
        assert cloud.received() == []
    finally:
        for p in reversed(started):
            p.stop()


def test_image_byte_limits(vision_node: str) -> None:
    big = png_uri(61, size=1_200_000)
    r = httpx.post(vision_node + CHAT, json={"messages": [image_message(big)]}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large"
    two = png_uri(62, size=900_000)
    body = {"messages": [image_message(two), image_message(two)], "max_tokens": 1}
    r = httpx.post(vision_node + CHAT, json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_large"
    assert "per request" in r.json()["error"]["message"]


class _ImageHost(BaseHTTPRequestHandler):
    """A stand-in for a remote image host the node's config allows."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        routes = {
            "/screen.png": (200, _encoded("PNG")),
            "/huge.png": (200, b"\x89PNG" + b"\x00" * 1_100_000),
            "/moved.png": (302, b""),
        }
        status, data = routes.get(self.path, (404, b"no such image"))
        self.send_response(status)
        if status == 302:
            self.send_header("location", "http://169.254.169.254/latest/meta-data")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_allowed_remote_host_is_fetched_within_limits(vision_node: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:

        def ask(path: str) -> httpx.Response:
            body = {"messages": [image_message(host + path)], "max_tokens": 1}
            return httpx.post(vision_node + CHAT, json=body, timeout=120)

        assert ask("/screen.png").status_code == 200
        for path, code in (
            ("/huge.png", "image_too_large"),
            ("/moved.png", "image_fetch_failed"),  # redirects are not followed
            ("/missing.png", "image_fetch_failed"),
        ):
            r = ask(path)
            assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    finally:
        server.shutdown()
        thread.join(10)


def test_image_with_schema_logprobs_and_a_forced_tool_call(vision_node: str) -> None:
    """The grammar and log-probabilities apply to the tokens sampled after the image."""
    schema = {
        "type": "object",
        "properties": {"button": {"type": "string", "maxLength": 12}, "x": {"type": "integer"}},
        "required": ["button", "x"],
        "additionalProperties": False,
    }
    body = {
        "messages": [image_message(png_uri(51), "Which button? Answer in JSON.")],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "tap", "schema": schema, "strict": True},
        },
        "logprobs": True,
        "top_logprobs": 2,
        "max_tokens": 48,
        "temperature": 0,
    }
    r = httpx.post(vision_node + CHAT, json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    choice = out["choices"][0]
    assert out["usage"]["prompt_tokens"] > 64  # the image was read
    if choice["finish_reason"] == "stop":
        answer = orjson.loads(choice["message"]["content"])
        assert set(answer) == {"button", "x"} and isinstance(answer["x"], int)
    entries = choice["logprobs"]["content"]
    # One entry per content token (the end-of-generation token counts as usage, not content).
    assert 1 <= len(entries) <= out["usage"]["completion_tokens"]
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    for e in entries:
        assert e["logprob"] <= 0.0 and len(e["top_logprobs"]) == 2
        assert e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][1]["logprob"]

    tap = {
        "type": "function",
        "function": {
            "name": "tap",
            "parameters": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                "required": ["x", "y"],
                "additionalProperties": False,
            },
        },
    }
    body = {
        "messages": [image_message(png_uri(52), "Tap the send button.")],
        "tools": [tap],
        "tool_choice": "required",
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    names, arguments, finish = [], "", None
    with httpx.stream("POST", vision_node + CHAT, json=body, timeout=300) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = orjson.loads(line[len("data: ") :])
            for c in chunk["choices"]:
                finish = c["finish_reason"] or finish
                for call in c["delta"].get("tool_calls") or ():
                    fn = call.get("function") or {}
                    if fn.get("name"):
                        names.append(fn["name"])
                    arguments += fn.get("arguments") or ""
    assert finish in ("tool_calls", "length")
    if finish == "tool_calls":
        assert names == ["tap"]
        assert set(orjson.loads(arguments)) == {"x", "y"}
