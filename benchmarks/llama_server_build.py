"""Build llama.cpp's own `llama-server` from the sources vendored in the llama-cpp-python sdist.

The peer in the benchmarks must run the same llama.cpp as the node, so it is built from the
sdist of the llama-cpp-python version the node uses (CMake, Release, no curl, no OpenSSL, no web
UI download) and cached under ~/.cache/edgecloud/llama-server/<version>/bin/llama-server
(override the root with LLAMA_SERVER_CACHE). A second call returns the cached binary at once.

    .venv/bin/python benchmarks/llama_server_build.py [--version 0.3.36] [--sdist FILE] [--jobs 2]

Needs cmake, a C++17 compiler and (for the download) network access to the package index; with
`--sdist` it runs offline. The build takes several minutes on two cores and runs under `nice`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE_ROOT = Path(
    os.environ.get("LLAMA_SERVER_CACHE", Path.home() / ".cache/edgecloud/llama-server")
)

CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


def installed_version() -> str:
    """The llama-cpp-python version the node runs (the sources the peer must match)."""
    return importlib.metadata.version("llama-cpp-python")


def binary_path(version: str) -> Path:
    return CACHE_ROOT / version / "bin" / "llama-server"


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
    )
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip did not leave an sdist of llama-cpp-python {version} in {into}")
    return found[0]


def extract_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Unpack only vendor/llama.cpp of the sdist into dest; return the llama.cpp source root."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if not members:
            raise RuntimeError(f"{sdist} has no vendor/llama.cpp")
        archive.extractall(dest, members=members, filter="data")
    roots = sorted(dest.glob("*/vendor/llama.cpp"))
    if not roots:
        raise RuntimeError(f"{sdist}: vendor/llama.cpp did not unpack")
    return roots[0]


def build(version: str, sdist: Path | None = None, jobs: int = 2) -> Path:
    """Return the cached llama-server for `version`, building it first if missing."""
    target = binary_path(version)
    if target.exists():
        return target
    work = CACHE_ROOT / version
    work.mkdir(parents=True, exist_ok=True)
    src_root = work / "src"
    with tempfile.TemporaryDirectory(prefix="llama-server-sdist-") as tmp:
        if not src_root.exists():
            archive = sdist or download_sdist(version, Path(tmp))
            unpacked = extract_llama_cpp(archive, Path(tmp) / "unpacked")
            shutil.move(str(unpacked), str(src_root))
    build_dir = work / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(src_root), "-B", str(build_dir), *generator, *CMAKE_OPTIONS],
        check=True,
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
    )
    built = build_dir / "bin" / "llama-server"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copy2(built, partial)
    partial.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version", default=None, help="llama-cpp-python version (default: installed)"
    )
    parser.add_argument(
        "--sdist", type=Path, default=None, help="use this sdist instead of downloading"
    )
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    version = args.version or installed_version()
    print(build(version, args.sdist, args.jobs))


if __name__ == "__main__":
    main()
