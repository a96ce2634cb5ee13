"""Processes the gateway benchmarks compare: the stand-in upstream, a bare Python pass-through,
`edgecloud gateway`, nginx (Debian nginx-light) and the LiteLLM proxy (in its own .venv-bench).

Shared by the gateway_*.py benchmarks. Every process is stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import yaml

from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from edgecloud.testing.cputime import tree_cpu_s

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_VENV = ROOT / ".venv-bench"
BENCH_LOCK = HERE / "requirements-bench.lock"


def ensure_bench_venv() -> Path:
    """Create .venv-bench from requirements-bench.lock if needed; returns its bin folder."""
    bin_dir = BENCH_VENV / "bin"
    if not (bin_dir / "litellm").exists():
        print(f"creating {BENCH_VENV.name} for LiteLLM (once; a few minutes) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", "-r", str(BENCH_LOCK)], check=True)
    return bin_dir


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists()
                                  else None)
    if path is None:
        sys.exit(f"{tool} is missing: apt-get install -y {package}")
    return path


def gateway_config(upstream: str) -> dict[str, object]:
    """The gateway config every gateway benchmark starts from: an edge and a cloud endpoint,
    both on `upstream`, and an EU residency rule."""
    return {
        "endpoints": [
            {"name": "edge-box", "tier": "edge", "url": upstream + "/v1",
             "capabilities": ["text", "vision"], "max_concurrency": 64},
            {"name": "cloud", "tier": "cloud", "url": upstream + "/v1",
             "region": "eu-central-1", "capabilities": ["text", "vision"],
             "price": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}},
        ],
        "policy": {"residency": {"eu": ["eu-central-1", "device"]}},
    }


class Peers(contextlib.ExitStack):
    """Starts processes on free ports and stops them all when the block ends."""

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.tmp = tmp
        self.pids: dict[str, int] = {}  # base URL -> the process serving it

    def _run(self, cmd: list[str], ready: str, name: str, timeout_s: float = 120,
             env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> str:
        """Start `cmd` (our environment with `env`, less `unset`), wait until `ready` answers;
        returns the base URL of `ready`."""
        proc = ManagedProcess(cmd, ready, log_path=str(self.tmp / f"{name}.log"), name=name,
                              env=env)
        for key in unset:
            proc.env.pop(key, None)
        proc.start()
        self.callback(proc.stop)
        proc.wait_ready(timeout_s=timeout_s)
        base = ready.split("/", 3)
        url = "/".join(base[:3])
        self.pids[url] = proc.pid
        return url

    def cpu_s(self, url: str) -> float | None:
        """CPU seconds (user + system, to the nanosecond) used so far by the processes serving
        `url`: the one started and its live children (nginx's workers). None for one not
        started here."""
        pid = self.pids.get(url)
        if pid is None or not psutil.pid_exists(pid):
            return None
        return tree_cpu_s([pid])

    def upstream(self, chunks: int = 64, pace_ms: float = 20.0, content: str = "tok ") -> str:
        port = free_port()
        return self._run([sys.executable, str(HERE / "gateway_upstream.py"), "--port", str(port),
                          "--chunks", str(chunks), "--pace-ms", str(pace_ms),
                          "--content", content], f"http://127.0.0.1:{port}/readyz", "upstream")

    def bare(self, upstream: str) -> str:
        port = free_port()
        return self._run([sys.executable, str(HERE / "bare_passthrough.py"), "--port", str(port),
                          "--upstream", upstream], f"http://127.0.0.1:{port}/readyz", "bare")

    def gateway(self, upstream: str, overrides: dict[str, object] | None = None,
                args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                name: str = "gateway") -> str:
        """The edgecloud gateway on `upstream`; `overrides` are laid over its config's top."""
        port = free_port()
        cfg = {**gateway_config(upstream), **(overrides or {})}
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        # The per-request JSON log goes to a file, as it would in production.
        return self._run(
            edgecloud_command("gateway", "--config", str(path), "--port", str(port), *args),
            f"http://127.0.0.1:{port}/readyz", name,
            env={"PYTHONPATH": str(ROOT), **(env or {})})

    def nginx(self, upstream: str, workers: str = "auto") -> str:
        binary = need("nginx", "nginx-light")
        port = free_port()
        up_port = upstream.rsplit(":", 1)[1]
        conf = self.tmp / "nginx.conf"
        t = self.tmp
        conf.write_text(textwrap.dedent(f"""\
            worker_processes {workers};
            pid {t}/nginx.pid;
            error_log {t}/nginx-error.log warn;
            events {{ worker_connections 8192; }}
            http {{
              access_log off;
              client_body_temp_path {t}/body; proxy_temp_path {t}/proxy;
              fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
              client_max_body_size 20m;
              client_body_buffer_size 4m;
              upstream up {{ server 127.0.0.1:{up_port}; keepalive 128; }}
              server {{
                listen 127.0.0.1:{port};
                location / {{
                  proxy_pass http://up;
                  proxy_http_version 1.1;
                  proxy_set_header Connection "";
                  proxy_buffering off;
                }}
              }}
            }}
            """), encoding="utf-8")
        return self._run([binary, "-c", str(conf), "-p", str(t), "-g", "daemon off;"],
                         f"http://127.0.0.1:{port}/readyz", "nginx")

    def litellm(self, upstream: str) -> str:
        cfg = {
            "model_list": [{"model_name": name, "litellm_params": {
                "model": "openai/standin", "api_base": upstream + "/v1", "api_key": "none"}}
                for name in ("gpt-4o-mini", "autoglm-phone-9b")],
            "litellm_settings": {"drop_params": True},
        }
        return self.litellm_proxy(cfg)

    def litellm_proxy(self, config: dict[str, object], name: str = "litellm",
                      timeout_s: float = 240) -> str:
        """One LiteLLM proxy process (one worker) with `config`; its base URL."""
        bin_dir = ensure_bench_venv()
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        # No master key (a local benchmark; it also spares LiteLLM its auth work per request).
        env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
               "DISABLE_SCHEMA_UPDATE": "true",
               "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
        port = free_port()
        return self._run([str(bin_dir / "litellm"), "--config", str(path), "--port", str(port),
                          "--host", "127.0.0.1", "--num_workers", "1"],
                         f"http://127.0.0.1:{port}/health/liveliness", name, timeout_s, env,
                         unset=("PYTHONPATH",))


@contextlib.contextmanager
def peers(prefix: str) -> Iterator[Peers]:
    """Peers in a fresh temporary folder (`p.tmp`), removed with them at the end; the processes
    this starts import this checkout's edgecloud unless PYTHONPATH says otherwise."""
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, Peers(Path(tmp)) as p:
        yield p


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text.strip())
    if m is None:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, body_file: Path, connections: int, seconds: float,
        headers: dict[str, str] | None = None) -> dict[str, float]:
    """Run wrk (1 thread) posting `body_file`; returns req/s, p50/p99 ms and error count."""
    binary = need("wrk", "wrk")
    script = body_file.with_suffix(".lua")
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    script.write_text(textwrap.dedent("""\
        wrk.method = "POST"
        wrk.headers["Content-Type"] = "application/json"
        """) + extra + textwrap.dedent(f"""\
        local f = io.open("{body_file}", "rb")
        wrk.body = f:read("*all")
        f:close()
        """), encoding="utf-8")
    out = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{max(int(seconds), 1)}s", "--latency",
         "-s", str(script), url + "/v1/chat/completions"],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\n\s+50%\s+(\S+)", out)
    p99 = re.search(r"\n\s+99%\s+(\S+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    n_err = (int(bad.group(1)) if bad else 0) + (
        sum(int(x) for x in errs.groups()) if errs else 0)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": _ms(p50.group(1)) if p50 else float("nan"),
        "p99_ms": _ms(p99.group(1)) if p99 else float("nan"),
        "errors": float(n_err),
    }
