"""The floor for a Python proxy: uvicorn + uvloop + httptools and one aiohttp session, no policy.

Benchmarks run it beside `edgecloud gateway` so the policy's own cost shows as a ratio.
Run: python benchmarks/bare_passthrough.py --port P --upstream http://127.0.0.1:U
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

from edgecloud.api.asgi import read_body

ARGS = argparse.Namespace()
SESSION: dict[str, aiohttp.ClientSession] = {}


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                SESSION["s"] = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await SESSION["s"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = await read_body(receive, 1 << 30)
    async with SESSION["s"].post(ARGS.upstream + scope["path"], data=body,
                                 headers={"content-type": "application/json"}) as resp:
        headers = [(b"content-type", resp.headers.get("content-type", "").encode())]
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        if resp.content_type == "text/event-stream":
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": await resp.read()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.parse_args(namespace=ARGS)
    uvicorn.run(app, host="127.0.0.1", port=ARGS.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
