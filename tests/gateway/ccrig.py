"""Rig for confidential-endpoint tests: a stand-in attestation service and stand-in confidential
endpoints (HTTPS, self-signed, with an evidence route) as real processes on 127.0.0.1."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgecloud.supervise import ManagedProcess, free_port
from edgecloud.testing.standin_attestation import GOOD_CLAIMS, ISSUER

HERE = Path(__file__).parent


@dataclass
class Verifier:
    proc: ManagedProcess
    base: str

    def control(self, **settings: Any) -> None:
        httpx.post(self.base + "/_control", json=settings, timeout=5).raise_for_status()


@dataclass
class CCEndpoint:
    """A stand-in confidential endpoint (or a man in the middle in front of one)."""

    proc: ManagedProcess
    base: str  # https://127.0.0.1:P
    key_file: Path

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def received(self) -> list[dict[str, Any]]:
        return httpx.get(self.base + "/_received", timeout=5, verify=False).json()

    def control(self, **settings: Any) -> None:
        httpx.post(self.base + "/_control", json=settings, timeout=5,
                   verify=False).raise_for_status()


def start_verifier(tmp: Path, started: list[ManagedProcess]) -> Verifier:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = ManagedProcess([sys.executable, "-m", "edgecloud.testing.standin_attestation",
                           "--port", str(port)], f"{base}/healthz",
                          log_path=str(tmp / f"verifier-{port}.log"), name="standin-verifier")
    started.append(proc)
    proc.start()
    proc.wait_ready(timeout_s=30)
    return Verifier(proc, base)


def start_cc(tmp: Path, started: list[ManagedProcess], verifier: Verifier | None, *,
             key_file: Path | None = None, mitm: str = "", port: int | None = None,
             name: str = "standin-cc") -> CCEndpoint:
    port = port or free_port()
    key_file = key_file or tmp / f"{name}-{port}-key.pem"
    args = [sys.executable, str(HERE / "standin_confidential.py"), "--port", str(port),
            "--key-file", str(key_file), "--name", name,
            "--verifier", verifier.base if verifier else ""]
    if mitm:
        args += ["--mitm", mitm]
    proc = ManagedProcess(args, None, log_path=str(tmp / f"{name}-{port}.log"), name=name)
    started.append(proc)
    proc.start()
    base = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.alive(), f"{name} exited; see its log"
        try:
            if httpx.get(base + "/healthz", verify=False, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{name} not up"
        time.sleep(0.05)
    return CCEndpoint(proc, base, key_file)


def cc_endpoint(name: str, url: str, verifier: Verifier, **conf: Any) -> dict[str, Any]:
    """A confidential endpoint entry for a gateway config (the generic token profile)."""
    evidence = url.removesuffix("/v1") + "/attestation"
    return {"name": name, "tier": "cloud", "url": url, "region": "eu-central-1",
            "capabilities": ["text", "vision"], "price": {"input_per_mtok": 0.1},
            "confidential": {"evidence_url": evidence, "issuer": ISSUER,
                             "jwks_url": verifier.base + "/certs",
                             "claims": {k: GOOD_CLAIMS[k] for k in
                                        ("tdx_mrtd", "tdx_is_debuggable", "attester_tcb_status")},
                             "max_age_s": 60, "timeout_s": 2, **conf}}


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_metric(base: str, name: str, want: Any, timeout_s: float = 30.0, **labels: str) -> str:
    """Poll /metrics until `want(value)` holds (or the deadline; then return what was seen)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(base + "/metrics", timeout=5).text
        v = metric(text, name, **labels)
        if (v is not None and want(v)) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def private_texts(received: list[dict[str, Any]], marker: str = "SECRET") -> list[str]:
    return [t for r in received for t in r["texts"] if re.search(marker, t)]
