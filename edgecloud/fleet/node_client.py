"""The agent's view of the local model node: admin swap, readiness and canary prompts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.api.yamlconfig import load_list
from edgecloud.fleet.errors import (
    ActivationFailed,
    CanaryFileError,
    NodeAdminRefused,
    NodeBusy,
    NodeUnreachable,
)


class CanaryPrompt(BaseModel):
    """One canary: a prompt, and optionally text the answer must contain."""

    # A misspelt key (`expected:`) would leave a canary that checks nothing: refuse it.
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    expect: str | None = None
    max_tokens: int = Field(default=8, ge=1, le=256)


DEFAULT_CANARIES = [
    CanaryPrompt(prompt="The capital of France is"),
    CanaryPrompt(prompt="One, two, three,"),
]


def load_canaries(path: str | Path | None) -> list[CanaryPrompt]:
    """Canary prompts from a YAML list; an error names the file, line, item and field."""
    if path is None:
        return list(DEFAULT_CANARIES)
    return load_list(path, CanaryPrompt, error=CanaryFileError)


@dataclass(frozen=True)
class CanaryResult:
    error_rate: float
    p95_ms: float | None
    eval_score: float


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])[:300]
    except Exception:
        return r.text[:200]


class NodeClient:
    """Talks to `edgecloud serve` (or any node with the same admin API)."""

    def __init__(self, base_url: str, admin_token: str | None, timeout_s: float = 300.0) -> None:
        self.base = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self.client.close()

    def current(self) -> dict[str, Any] | None:
        """The node's current model (GET /admin/model); None when it has none loaded."""
        try:
            r = self.client.get(f"{self.base}/admin/model", timeout=60)
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"node {self.base}: {exc}") from None
        if r.status_code != 200:
            self._refused(r)
            raise NodeUnreachable(f"node {self.base}: GET /admin/model: HTTP {r.status_code}")
        try:
            info = r.json()
        except ValueError:
            raise NodeUnreachable(f"node {self.base}: /admin/model is not JSON") from None
        if isinstance(info, dict) and info.get("loaded") is False and info.get("state") in (
            "loading",
            "swapping",
        ):
            # A node that just (re)started is loading its configured model: wait for it, do
            # not swap over it (the swap would queue behind the load and load the model again).
            raise NodeUnreachable(f"node {self.base}: still loading its model")
        if not isinstance(info, dict) or info.get("loaded") is False:
            return None
        return info

    def swap(self, path: Path, version: str) -> dict[str, Any]:
        """Ask the node to load, warm and swap in the model at `path`; what it then serves.

        NodeBusy for a 409 (another swap is running: try again), NodeAdminRefused when the
        node refuses the agent itself, ActivationFailed when it refuses the model.
        """
        try:
            r = self.client.post(
                f"{self.base}/admin/model", json={"path": str(path), "version": version}
            )
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"node {self.base}: {exc}") from None
        if r.status_code == 409:
            raise NodeBusy(f"node {self.base}: {_message(r)}")
        if r.status_code != 200:
            self._refused(r)
            raise ActivationFailed("node_refused_model", f"HTTP {r.status_code}: {_message(r)}")
        try:
            info = r.json()
        except ValueError:
            info = None
        return info if isinstance(info, dict) else {}

    def _refused(self, r: httpx.Response) -> None:
        # 401: wrong admin token; 403: a path outside the node's model folders; 404: admin off
        if r.status_code in (401, 403, 404):
            raise NodeAdminRefused(
                f"node {self.base} refused the agent (HTTP {r.status_code}): {_message(r)}"
            )

    def wait_ready(self, deadline_s: float = 60.0) -> None:
        t_end = time.monotonic() + deadline_s
        while True:
            try:
                if self.client.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > t_end:
                raise ActivationFailed("not_ready", f"/readyz not 200 within {deadline_s:g} s")
            time.sleep(0.1)

    def run_canaries(self, canaries: list[CanaryPrompt]) -> CanaryResult:
        """Send every canary to /v1/completions at once (the node batches them); error rate,
        p95 latency and pass rate."""
        if not canaries:
            return CanaryResult(0.0, None, 0.0)
        with ThreadPoolExecutor(min(len(canaries), 8), thread_name_prefix="canary") as pool:
            outcomes = list(pool.map(self._canary, canaries))
        errors = sum(1 for o in outcomes if o is None)
        passed = sum(1 for o in outcomes if o is not None and o[1])
        latencies = [o[0] for o in outcomes if o is not None]
        n = len(canaries)
        return CanaryResult(errors / n, p95(latencies), passed / n)

    def _canary(self, c: CanaryPrompt) -> tuple[float, bool] | None:
        """(latency ms, passed), or None when the node failed to answer."""
        t0 = time.perf_counter()
        try:
            r = self.client.post(
                f"{self.base}/v1/completions",
                json={"prompt": c.prompt, "max_tokens": c.max_tokens, "temperature": 0},
                timeout=60,
            )
        except httpx.HTTPError:
            return None
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            return None
        try:
            text = r.json()["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return ms, c.expect is None or c.expect in text
