"""Build llama.cpp's own `llama-server` from the sources vendored in the llama-cpp-python sdist.

The peer in the benchmarks must run the same llama.cpp as the node, built the same way: the
recipe is the node's own (edgecloud/node/llama_build.py: portable, CPU variants chosen at run
time, no AMX), with CMake, Release, shared libraries, no curl, no OpenSSL, no web UI. It is
cached under ~/.cache/edgecloud/llama-server/<version>-<machine>-<settings>/bin/ (override the
root with LLAMA_SERVER_CACHE); a second call returns the cached binary at once.

    .venv/bin/python benchmarks/llama_server_build.py [--version 0.3.36] [--sdist FILE] [--jobs 2]

Needs cmake, a C++17 compiler and (for the download) network access to the package index; with
`--sdist` it runs offline. The build takes several minutes on two cores and runs under `nice`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgecloud.node import llama_build  # noqa: E402

CACHE_ROOT = Path(
    os.environ.get("LLAMA_SERVER_CACHE", Path.home() / ".cache/edgecloud/llama-server")
)


def installed_version() -> str:
    """The llama-cpp-python version the node runs (the sources the peer must match)."""
    return importlib.metadata.version("llama-cpp-python")


def binary_path(version: str) -> Path:
    return CACHE_ROOT / llama_build.settings_tag(version, llama_build.SERVER_OPTIONS) / "bin" / (
        "llama-server"
    )


def build(version: str, sdist: Path | None = None, jobs: int = 2) -> Path:
    """Return the cached llama-server for `version`, building it first if missing."""
    return llama_build.build_server(version, CACHE_ROOT, sdist, jobs)


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
