"""A stand-in for a remote OpenAI-compatible cloud provider, for tests: records what it receives.

Run: python tests/gateway/standin_provider.py --port P [--name NAME] [--model-id ID]
Besides the OpenAI routes it has test-only controls:
  GET /_received          -> the requests it received (summaries, no bodies)
  DELETE /_received       -> forget them (and the disconnect count)
  POST /_control {"fail": 503|null, "hang_s": 0, "cut_after": null, "chunks": 8, "delay_ms": 0,
                  "fault": null, "echo": false}
  GET /_stats             -> {"held": answers in progress, "disconnects": callers that left}
"fault" plays a broken provider on non-streamed answers: "hang_after_headers" (headers and a
first piece of the body, then nothing), "truncate_chunked" (a chunked body cut off),
"short_length" (fewer bytes than its Content-Length), "invalid_json" (a 200 that is not JSON).
Every wait (hang_s, delay_ms, a hang after the headers) ends early when the caller disconnects,
and is then counted in "disconnects".
With "echo" on, it answers with the texts it received (joined by newlines) as content, tool-call
arguments (when the request has tools) or completion text; streamed in events of 1 to 7
characters, some JSON-escaped to ASCII, written in random byte pieces; and it records each body.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from typing import Any

import orjson
import uvicorn

from edgecloud.api.asgi import SSE_DONE, read_body, send_error, send_json, sse_event
from edgecloud.api.errors import APIError, NotFound
from edgecloud.api.replies import Reply, usage

STATE: dict[str, Any] = {
    "received": [],
    "control": {"fail": None, "hang_s": 0.0, "cut_after": None, "chunks": 8, "delay_ms": 0,
                "fault": None, "echo": False},
    "held": 0,
    "disconnects": 0,
}
ARGS = argparse.Namespace()


def _summary(path: str, headers: dict[bytes, bytes], raw: bytes) -> dict[str, Any]:
    body = orjson.loads(raw)
    images = []
    texts = []
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else ""
                    images.append(hashlib.sha256(url.encode()).hexdigest())
                elif part.get("type") == "text":
                    texts.append(part["text"])
    if isinstance(body.get("prompt"), str):
        texts.append(body["prompt"])
    if path == "/v1/embeddings":
        value = body.get("input")
        texts += [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]
    return {
        "path": path,
        "model": body.get("model"),
        "user": body.get("user"),
        "stream": body.get("stream", False),
        "body_sha256": hashlib.sha256(raw).hexdigest(),
        "body_bytes": len(raw),
        "images": images,
        "texts": texts,
        "extra": {k: body[k] for k in ("top_p", "frequency_penalty", "extra_field") if k in body},
        "authorization": headers.get(b"authorization", b"").decode(),
        "traceparent": headers.get(b"traceparent", b"").decode() or None,
        "tracestate": headers.get(b"tracestate", b"").decode() or None,
        "messages": len(body.get("messages") or []),
    }


async def _send_json(send: Any, status: int, obj: Any) -> None:
    await send_json(send, status, obj)


async def _read(receive: Any) -> bytes:
    return await read_body(receive, 64 << 20)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path in ("/healthz", "/readyz"):
        await _send_json(send, 200, {"status": "ok"})
    elif path == "/v1/models":
        await _send_json(send, 200, {"object": "list", "data": [
            {"id": ARGS.model_id, "object": "model", "created": 0, "owned_by": "standin"}]})
    elif path == "/_received":
        if method == "DELETE":
            STATE["received"].clear()
            STATE["disconnects"] = 0
        await _send_json(send, 200, STATE["received"])
    elif path == "/_stats":
        await _send_json(send, 200, {"held": STATE["held"], "disconnects": STATE["disconnects"]})
    elif path == "/_control":
        STATE["control"].update(orjson.loads(await _read(receive)))
        await _send_json(send, 200, STATE["control"])
    elif path == "/v1/embeddings":  # records the inputs; answers one fixed vector per input
        raw = await _read(receive)
        STATE["received"].append(_summary(path, dict(scope["headers"]), raw))
        value = orjson.loads(raw).get("input")
        n = 1 if isinstance(value, str) else len(value)
        await _send_json(send, 200, {"object": "list", "model": ARGS.model_id, "data": [
            {"object": "embedding", "index": i, "embedding": [1.0, 0.0]} for i in range(n)],
            "usage": {"prompt_tokens": n, "total_tokens": n}})
    elif path in ("/v1/chat/completions", "/v1/completions"):
        raw = await _read(receive)
        headers = dict(scope["headers"])
        STATE["received"].append(_summary(path, headers, raw))
        if STATE["control"]["echo"]:
            STATE["received"][-1]["raw"] = raw.decode()
            await _echo(send, path, orjson.loads(raw), len(STATE["received"]))
            return
        STATE["held"] += 1
        try:
            await _answer(send, receive, path, orjson.loads(raw))
        finally:
            STATE["held"] -= 1
    else:
        await send_error(send, NotFound("no route"))


async def _hold(receive: Any, seconds: float) -> bool:
    """Wait `seconds`; True (and counted) if the caller disconnects first."""
    left = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({left}, timeout=seconds)
    finally:
        if not left.done():
            left.cancel()
    if done and left.result()["type"] == "http.disconnect":
        STATE["disconnects"] += 1
        return True
    return False


async def _fault(send: Any, receive: Any, fault: str, answer: bytes) -> None:
    if fault == "invalid_json":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer[: len(answer) // 2]})
        return
    headers = [(b"content-type", b"application/json")]
    if fault == "short_length":
        headers.append((b"content-length", str(len(answer)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer[:10], "more_body": True})
    if fault == "hang_after_headers":
        await _hold(receive, 60.0)
        return
    # short_length / truncate_chunked: uvicorn drops the connection mid-answer
    raise RuntimeError(f"stand-in fault {fault}")


async def _answer(send: Any, receive: Any, path: str, body: dict[str, Any]) -> None:
    ctl = STATE["control"]
    if ctl["hang_s"] and await _hold(receive, ctl["hang_s"]):
        return
    if ctl["fail"]:
        await send_error(send, APIError("stand-in failure", status=int(ctl["fail"])))
        return
    text = f"answer from {ARGS.name}"
    reply = Reply(body.get("model") or "", chat=path.endswith("chat/completions"),
                  reply_id="cmpl-standin", fingerprint=None)
    if not body.get("stream"):
        answer = reply.completion(text, "stop", usage(5, 4))
        if ctl["fault"]:
            await _fault(send, receive, ctl["fault"], orjson.dumps(answer))
            return
        await _send_json(send, 200, answer)
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for i in range(int(ctl["chunks"])):
        if ctl["cut_after"] is not None and i >= int(ctl["cut_after"]):
            raise RuntimeError("stand-in cuts the stream")  # uvicorn drops the connection
        await send({"type": "http.response.body", "body": sse_event(reply.chunk(f"tok{i} ")),
                    "more_body": True})
        if ctl["delay_ms"] and await _hold(receive, ctl["delay_ms"] / 1000):
            return
    await send({"type": "http.response.body", "body": SSE_DONE})


def _echo_text(body: dict[str, Any]) -> str:
    texts: list[str] = []
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if p.get("type") == "text"]
        for call in msg.get("tool_calls") or []:
            texts.append(call["function"]["arguments"])
    prompt = body.get("prompt")
    texts += [prompt] if isinstance(prompt, str) else prompt or []
    return "\n".join(texts)


async def _echo(send: Any, path: str, body: dict[str, Any], seed: int) -> None:
    import json
    import random

    rng = random.Random(seed)
    text = _echo_text(body)
    chat = path.endswith("chat/completions")
    tools = chat and bool(body.get("tools"))

    def choice(piece: str, whole: bool) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": piece, "finish_reason": "stop" if whole else None}
        key = "message" if whole else "delta"
        if tools:
            return {"index": 0, key: {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "echo", "arguments": piece}}]},
                "finish_reason": "tool_calls" if whole else None}
        return {"index": 0, key: {"role": "assistant", "content": piece},
                "finish_reason": "stop" if whole else None}

    if not body.get("stream"):
        await _send_json(send, 200, {"id": "cmpl-echo", "object": "x", "created": 0,
                                     "model": body.get("model"), "choices": [choice(text, True)],
                                     "usage": {"completion_tokens": 1}})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    events = []
    i = 0
    while i < len(text):
        n = rng.randint(1, 7)
        obj = {"id": "cmpl-echo", "object": "chunk", "created": 0, "model": body.get("model"),
               "choices": [choice(text[i : i + n], False)]}
        raw = (json.dumps(obj, ensure_ascii=True).encode() if rng.random() < 0.3
               else orjson.dumps(obj))
        events.append(b"data: " + raw + b"\n\n")
        i += n
    events.append(b"data: " + orjson.dumps({"id": "cmpl-echo", "object": "chunk", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\ndata: [DONE]\n\n")
    data = b"".join(events)
    i = 0
    while i < len(data):
        n = rng.randint(1, 200)
        await send({"type": "http.response.body", "body": data[i : i + n], "more_body": True})
        i += n
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="standin-cloud")
    parser.add_argument("--model-id", default="standin-model")
    parser.parse_args(namespace=ARGS)
    uvicorn.run(app, host="127.0.0.1", port=ARGS.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
