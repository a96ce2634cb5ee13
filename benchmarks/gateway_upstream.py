"""A fast stand-in OpenAI upstream for the gateway benchmarks (uvicorn + uvloop + httptools).

Non-streaming requests get a fixed small chat completion at once. Streaming requests get
`--chunks` SSE chunks `--pace-ms` apart (a 50 tokens/s model by default).

Run: python benchmarks/gateway_upstream.py --port P [--chunks 64 --pace-ms 20] [--content TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
import uvicorn

from edgecloud.api.asgi import read_body

ANSWER = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "standin",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
})
JSON = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
MODELS = orjson.dumps({"object": "list", "data": [{"id": "standin", "object": "model"}]})
CHUNK = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
         b'"model":"standin","choices":[{"index":0,"delta":{"content":"tok "},'
         b'"finish_reason":null}]}\n\n')
ARGS = argparse.Namespace(chunks=64, pace_ms=20.0, content="tok ")


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path in ("/v1/chat/completions", "/v1/completions"):
        head = (await read_body(receive, 1 << 30))[:200]
        if b'"stream":true' in head or b'"stream": true' in head:
            await _stream(send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": JSON})
        await send({"type": "http.response.body", "body": ANSWER})
    elif path == "/v1/models":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": MODELS})
    else:
        await send({"type": "http.response.start", "status": 200 if path == "/readyz" else 404,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


async def _stream(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    loop = asyncio.get_running_loop()
    start = loop.time()
    pace = ARGS.pace_ms / 1000.0
    for i in range(ARGS.chunks):
        # Pace against the start time so the upstream itself does not drift.
        delay = start + i * pace - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--pace-ms", type=float, default=20.0)
    parser.add_argument("--content", default="tok ", help="the text of every streamed chunk")
    parser.parse_args(namespace=ARGS)
    global CHUNK
    CHUNK = CHUNK.replace(b'"tok "', orjson.dumps(ARGS.content))
    uvicorn.run(app, host="127.0.0.1", port=ARGS.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off", backlog=4096,
                server_header=False, date_header=False)


if __name__ == "__main__":
    main()
