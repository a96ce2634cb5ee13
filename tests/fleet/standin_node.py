"""A STAND-IN for the model node (`edgecloud serve`) in agent tests: not a model server.

It implements only what the agent uses: `/readyz`, `GET|POST /admin/model` (Bearer token from
EDGECLOUD_ADMIN_TOKEN; 409 while another swap runs, as the real node answers) and
`/v1/completions`; `POST /test/busy {"seconds": S}` makes it busy with a swap for S seconds.
Its "model files" are small text files: a file that does not start with `STANDIN-MODEL` is
refused like a corrupt GGUF, and words in the file choose how the model behaves
(`behaviour=slow` answers in 300 ms, `behaviour=wrong` answers nonsense, `behaviour=crash`
kills the process while loading, as a model that trips a llama.cpp assertion does), so tests
can publish good and bad versions that are a few KB.

Run: python -m tests.fleet.standin_node --port P --model FILE [--load-delay S]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import orjson
import uvicorn

MAGIC = b"STANDIN-MODEL"


def dummy_model(version: str, behaviour: str = "ok", size: int = 4096) -> bytes:
    """The bytes of a stand-in model file (a few KB)."""
    head = f"STANDIN-MODEL version={version} behaviour={behaviour}\n".encode()
    return head + bytes((i * 7 + len(version)) % 251 for i in range(size - len(head)))


class StandInNode:
    def __init__(self, model: Path, load_delay: float, token: str | None) -> None:
        self.load_delay = load_delay
        self.token = token
        self.current: dict[str, Any] = {}
        self.behaviour = "ok"
        self.busy_until = 0.0
        self._load(model, "initial")

    def _load(self, path: Path, version: str) -> None:
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise ValueError(f"{path} is not a valid model file")
        head = data.split(b"\n", 1)[0].decode()
        behaviour = head.split("behaviour=")[1] if "behaviour=" in head else "ok"
        if behaviour == "crash":
            os._exit(134)  # SIGABRT's exit status, no answer sent
        self.behaviour = behaviour
        self.current = {
            "id": path.stem,
            "path": str(path),
            "sha256": hashlib.sha256(data).hexdigest(),
            "version": version,
            "loaded_at": time.time(),
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if path in ("/readyz", "/healthz"):
            return await self._send(send, 200, {"status": "ok"})
        if path == "/admin/model":
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if self.token is None or auth != f"Bearer {self.token}".encode():
                return await self._send(send, 401, {"error": {"message": "bad token"}})
            if method == "GET":
                return await self._send(send, 200, self.current)
            if time.monotonic() < self.busy_until:
                busy = {"message": "Another model swap is in progress.", "code": "swap_in_progress"}
                return await self._send(send, 409, {"error": busy})
            req = orjson.loads(body)
            self.busy_until = time.monotonic() + self.load_delay
            await asyncio.sleep(self.load_delay)
            try:
                self._load(Path(req["path"]), req.get("version", ""))
            except (OSError, ValueError) as exc:
                return await self._send(send, 400, {"error": {"message": str(exc)}})
            finally:
                self.busy_until = 0.0
            return await self._send(send, 200, self.current)
        if path == "/test/busy":
            self.busy_until = time.monotonic() + float(orjson.loads(body)["seconds"])
            return await self._send(send, 200, {})
        if path == "/v1/completions":
            if self.behaviour == "slow":
                await asyncio.sleep(0.3)
            text = " Paris" if self.behaviour != "wrong" else " ???"
            return await self._send(send, 200, {"choices": [{"text": text, "index": 0}]})
        return await self._send(send, 404, {"error": {"message": "not found"}})

    async def _send(self, send: Any, status: int, obj: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(obj)})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--load-delay", type=float, default=0.0)
    a = p.parse_args()
    app = StandInNode(a.model, a.load_delay, os.environ.get("EDGECLOUD_ADMIN_TOKEN"))
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
