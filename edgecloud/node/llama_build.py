"""How llama.cpp is built for edgecloud: one portable build, CPU kernels chosen at run time, no AMX.

Both the node's llama-cpp-python wheel (`make setup`) and the `llama-server` that the benchmarks
run as the peer are built from the sources vendored in the llama-cpp-python sdist, with the same
settings, from here:

- `GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`, as llama.cpp's own release builds do: the CPU
  backend is compiled once per x86/ARM generation and ggml loads the best one the CPU can run,
  so a wheel built on one machine runs on an older or newer one (a native build dies with SIGILL
  on a CPU that lacks one of the builder's instructions).
- The Intel AMX variant (`sapphirerapids`) is left out and AMX is switched off in the compiler
  flags: ggml's AMX matmul segfaults on the first decode on Sapphire Rapids class CPUs
  (llama.cpp issue 20824). Those CPUs run the AVX-512 VNNI/BF16 variant instead.

The settings are hashed into the cache path of the wheel, so a wheel built with other settings
(an older native one, say) is never picked up again. This module uses only the standard library:
the Makefile runs it before anything else is installed.

    python -m edgecloud.node.llama_build wheel --version 0.3.36 --cache ~/.cache/edgecloud/wheels
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# The line of ggml/src/CMakeLists.txt that adds the AMX variant to GGML_CPU_ALL_VARIANTS.
AMX_VARIANT_MARK = "ggml_add_cpu_backend_variant(sapphirerapids"
# Compiler flags that keep AMX instructions out of every object, whatever the build machine.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# Instructions that only AMX kernels use; tests look for them in the built libraries.
AMX_MNEMONICS = ("tileloadd", "tdpbssd", "tdpbf16ps", "ldtilecfg")

GGML_OPTIONS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
)
# Only for measuring what portability costs (benchmarks/portable_vs_native.py): one CPU backend
# tuned for the build machine (-march=native), still without AMX. Not for shipping.
NATIVE_OPTIONS = (
    "-DGGML_NATIVE=ON",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
)
FLAVORS = {"portable": GGML_OPTIONS, "native": NATIVE_OPTIONS}
# The wheel: the CPU variants go beside libllama.so, where the node loads them from.
WHEEL_OPTIONS = ("-DCMAKE_INSTALL_BINDIR=llama_cpp/lib",)
SERVER_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
# Bump when the recipe changes in a way the options above do not show.
RECIPE = "portable-noamx-1"


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def compiler_flags() -> str:
    return NO_AMX_FLAGS if is_x86() else ""


def cmake_args(extra: tuple[str, ...] = (), flavor: str = "portable") -> list[str]:
    """Every CMake argument of the build (the compiler flags included)."""
    args = [*FLAVORS[flavor], *extra]
    flags = compiler_flags()
    if flags:
        args += [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    return args


def settings_tag(version: str, extra: tuple[str, ...] = (), flavor: str = "portable") -> str:
    """A short name for one set of build settings: `<version>-<machine>-<hash>`."""
    text = "\n".join([RECIPE, version, platform.machine(), *cmake_args(extra, flavor)])
    return f"{version}-{platform.machine()}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def wheel_dir(cache: Path, version: str, flavor: str = "portable") -> Path:
    return cache / settings_tag(version, WHEEL_OPTIONS, flavor)


def download_sdist(version: str, into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={version}",
            "-d",
            str(into),
        ],
        check=True,
        stdout=sys.stderr,
    )
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip did not leave an sdist of llama-cpp-python {version} in {into}")
    return found[0]


def unpack(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist into dest and return its root, with the AMX variant taken out."""
    with tarfile.open(sdist) as archive:
        archive.extractall(dest, filter="data")
    roots = sorted(p.parent.parent for p in dest.glob("*/vendor/llama.cpp"))
    if not roots:
        raise RuntimeError(f"{sdist} has no vendor/llama.cpp")
    drop_amx_variant(roots[0] / "vendor" / "llama.cpp")
    return roots[0]


def drop_amx_variant(llama_cpp_root: Path) -> None:
    """Remove the AMX CPU variant from GGML_CPU_ALL_VARIANTS; fail if the recipe moved."""
    cmake_file = llama_cpp_root / "ggml" / "src" / "CMakeLists.txt"
    lines = cmake_file.read_text().splitlines(keepends=True)
    kept = [line for line in lines if AMX_VARIANT_MARK not in line]
    if len(kept) == len(lines):
        raise RuntimeError(
            f"{cmake_file} no longer has `{AMX_VARIANT_MARK}`: check how this llama.cpp adds "
            "its AMX variant before building (edgecloud/node/llama_build.py)"
        )
    cmake_file.write_text("".join(kept))


def build_wheel(
    version: str, cache: Path, sdist: Path | None = None, flavor: str = "portable"
) -> Path:
    """Return the cached wheel for `version` built with these settings, building it if missing."""
    target_dir = wheel_dir(cache, version, flavor)
    found = sorted(target_dir.glob(f"llama_cpp_python-{version}-*.whl"))
    if found:
        return found[0]
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-wheel-") as tmp:
        archive = sdist or download_sdist(version, Path(tmp))
        root = unpack(archive, Path(tmp) / "src")
        env = dict(os.environ)
        env["CMAKE_ARGS"] = " ".join(_quoted(a) for a in cmake_args(WHEEL_OPTIONS, flavor))
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        out = Path(tmp) / "out"
        # The build's output goes to stderr: stdout carries only the wheel's path.
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", str(root), "-w", str(out)],
            check=True,
            env=env,
            stdout=sys.stderr,
        )
        built = sorted(out.glob("llama_cpp_python-*.whl"))
        if not built:
            raise RuntimeError("pip wheel left no llama_cpp_python wheel")
        partial = target_dir / (built[0].name + ".partial")
        shutil.copy2(built[0], partial)
        final = target_dir / built[0].name
        partial.replace(final)
    return final


def build_server(version: str, cache: Path, sdist: Path | None = None, jobs: int = 2) -> Path:
    """Return the cached `llama-server` built with these settings, building it if missing.

    The binary sits beside its shared libraries and CPU variants (`bin/`), which it loads from
    its own folder at start.
    """
    work = cache / settings_tag(version, SERVER_OPTIONS)
    target = work / "bin" / "llama-server"
    if target.exists():
        return target
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        archive = sdist or download_sdist(version, Path(tmp))
        root = unpack(archive, Path(tmp) / "src")
        build_dir = Path(tmp) / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(
            [
                "cmake",
                "-S",
                str(root / "vendor" / "llama.cpp"),
                "-B",
                str(build_dir),
                *generator,
                *cmake_args(SERVER_OPTIONS),
            ],
            check=True,
            stdout=sys.stderr,
        )
        subprocess.run(
            [
                "nice",
                "-n",
                "10",
                "cmake",
                "--build",
                str(build_dir),
                "--target",
                "llama-server",
                "-j",
                str(jobs),
            ],
            check=True,
            stdout=sys.stderr,
        )
        staged = work / "bin.partial"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        for item in (build_dir / "bin").iterdir():
            if item.is_file() and (item.name == "llama-server" or ".so" in item.name):
                shutil.copy2(item, staged / item.name, follow_symlinks=True)
        shutil.rmtree(work / "bin", ignore_errors=True)
        staged.replace(work / "bin")
    return target


def _quoted(arg: str) -> str:
    # CMAKE_ARGS is split like a shell line by scikit-build-core.
    return f'"{arg}"' if " " in arg else arg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("wheel", "server", "tag"))
    parser.add_argument("--version", required=True, help="llama-cpp-python version")
    parser.add_argument("--cache", type=Path, required=True, help="cache root")
    parser.add_argument("--sdist", type=Path, default=None, help="use this sdist (offline)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--flavor",
        choices=sorted(FLAVORS),
        default="portable",
        help="native: only to measure what portability costs",
    )
    args = parser.parse_args(argv)
    if args.what == "wheel":
        print(build_wheel(args.version, args.cache, args.sdist, args.flavor))
    elif args.what == "server":
        print(build_server(args.version, args.cache, args.sdist, args.jobs))
    else:
        print(wheel_dir(args.cache, args.version, args.flavor))


if __name__ == "__main__":
    main()
