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

- For arm64 the same recipe cross-compiles (`libs --machine aarch64`): a CMake toolchain file for
  Debian's `aarch64-linux-gnu` compilers, and the ARM variants that the compiler can build (GCC
  12, Debian bookworm's, has no SME, so the two `armv9.2` variants are left out there; those CPUs
  run the SVE2/I8MM variant). The result is llama-cpp-python's pure-Python `llama_cpp` package
  with the arm64 libraries in `llama_cpp/lib`, as a wheel would install it.

The settings are hashed into the cache path of the wheel, so a wheel built with other settings
(an older native one, say) is never picked up again. This module uses only the standard library:
the Makefile runs it before anything else is installed.

    python -m edgecloud.node.llama_build wheel --version 0.3.36 --cache ~/.cache/edgecloud/wheels
    python -m edgecloud.node.llama_build libs --machine aarch64 --version 0.3.36 --cache DIR
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
# The ARM variants that need SME (-march=armv9.2-a+sme); left out where the compiler lacks it.
SME_VARIANT_MARKS = (
    "ggml_add_cpu_backend_variant(armv9.2_1",
    "ggml_add_cpu_backend_variant(armv9.2_2",
)
# GNU triplets of the cross compilers Debian packages (gcc-aarch64-linux-gnu, g++-...).
CROSS_TRIPLETS = {"aarch64": "aarch64-linux-gnu"}
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


def is_x86(machine: str | None = None) -> bool:
    """Whether `machine` (default: this one) is an x86 CPU."""
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i686", "i386")


def compiler_flags(machine: str | None = None) -> str:
    return NO_AMX_FLAGS if is_x86(machine) else ""


def cmake_args(
    extra: tuple[str, ...] = (), flavor: str = "portable", machine: str | None = None
) -> list[str]:
    """Every CMake argument of the build (the compiler flags included) for `machine`."""
    args = [*FLAVORS[flavor], *extra]
    flags = compiler_flags(machine)
    if flags:
        args += [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    return args


def settings_tag(
    version: str, extra: tuple[str, ...] = (), flavor: str = "portable", machine: str | None = None
) -> str:
    """A short name for one set of build settings: `<version>-<machine>-<hash>`."""
    target = machine or platform.machine()
    lines = [RECIPE, version, target, *cmake_args(extra, flavor, target)]
    if dropped_variants(target):
        lines.append("no-sme-variants")
    text = "\n".join(lines)
    return f"{version}-{target}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def cross_toolchain(machine: str, sysroot: Path | None = None) -> str:
    """A CMake toolchain file that cross-compiles for Linux on `machine` with Debian's GCC."""
    triplet = CROSS_TRIPLETS.get(machine)
    if triplet is None:
        raise ValueError(
            f"no cross compiler known for {machine!r}; known: {sorted(CROSS_TRIPLETS)}"
        )
    lines = [
        "set(CMAKE_SYSTEM_NAME Linux)",
        f"set(CMAKE_SYSTEM_PROCESSOR {machine})",
        f"set(CMAKE_C_COMPILER {triplet}-gcc)",
        f"set(CMAKE_CXX_COMPILER {triplet}-g++)",
        # Libraries and headers of the target only; programs (cmake's helpers) of the host.
        "set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)",
        "set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)",
        "set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)",
        "set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)",
        f"set(CMAKE_FIND_ROOT_PATH /usr/{triplet})",
    ]
    if sysroot is not None:
        lines.append(f"set(CMAKE_SYSROOT {sysroot})")
    return "\n".join(lines) + "\n"


def c_compiler(machine: str | None = None) -> str:
    """The C compiler a build for `machine` uses: the cross GCC, or this machine's `cc`."""
    if machine is None or machine == platform.machine():
        return os.environ.get("CC", "cc")
    return f"{CROSS_TRIPLETS[machine]}-gcc"


def is_arm64(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("aarch64", "arm64")


def dropped_variants(machine: str | None = None) -> tuple[str, ...]:
    """Marks of the Linux ARM variants the compiler cannot build (SME before GCC 14): left out.

    Only for Linux targets: macOS and Android have variant lists of their own.
    """
    native = machine is None or machine == platform.machine()
    other_os = native and (platform.system() != "Linux" or hasattr(sys, "getandroidapilevel"))
    if not is_arm64(machine) or other_os or compiler_has_sme(c_compiler(machine)):
        return ()
    return SME_VARIANT_MARKS


def compiler_has_sme(c_compiler: str) -> bool:
    """Whether `c_compiler` accepts the -march of ggml's SME variants (GCC 14+, Clang 18+)."""
    with tempfile.TemporaryDirectory(prefix="sme-probe-") as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text("int main(void) { return 0; }\n")
        done = subprocess.run(
            [c_compiler, "-march=armv9.2-a+sme", "-c", str(source), "-o", str(Path(tmp) / "p.o")],
            capture_output=True,
        )
    return done.returncode == 0


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


def unpack(sdist: Path, dest: Path, machine: str | None = None) -> Path:
    """Unpack the sdist into dest and return its root, with the AMX variant taken out (and the
    variants the compiler for `machine` cannot build)."""
    with tarfile.open(sdist) as archive:
        archive.extractall(dest, filter="data")
    roots = sorted(p.parent.parent for p in dest.glob("*/vendor/llama.cpp"))
    if not roots:
        raise RuntimeError(f"{sdist} has no vendor/llama.cpp")
    drop_amx_variant(roots[0] / "vendor" / "llama.cpp")
    dropped = dropped_variants(machine)
    if dropped:
        drop_variants(roots[0] / "vendor" / "llama.cpp", dropped)
    return roots[0]


def drop_amx_variant(llama_cpp_root: Path) -> None:
    """Remove the AMX CPU variant from GGML_CPU_ALL_VARIANTS; fail if the recipe moved."""
    drop_variants(llama_cpp_root, (AMX_VARIANT_MARK,))


def drop_variants(llama_cpp_root: Path, marks: tuple[str, ...]) -> None:
    """Remove the CPU variants whose CMake lines hold one of `marks`; fail if one is missing."""
    cmake_file = llama_cpp_root / "ggml" / "src" / "CMakeLists.txt"
    lines = cmake_file.read_text().splitlines(keepends=True)
    for mark in marks:
        if not any(mark in line for line in lines):
            raise RuntimeError(
                f"{cmake_file} no longer has `{mark}`: check how this llama.cpp adds its CPU "
                "variants before building (edgecloud/node/llama_build.py)"
            )
    kept = [line for line in lines if not any(mark in line for mark in marks)]
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
        _run_from_own_folder(work / "bin")  # a copy cached before this step existed
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
        _run_from_own_folder(staged)
        shutil.rmtree(work / "bin", ignore_errors=True)
        staged.replace(work / "bin")
    return target


def _run_from_own_folder(folder: Path) -> None:
    """Point the copied binary and libraries at their own folder ($ORIGIN): CMake left them the
    temporary build folder as their run path, which is gone once the build is cached."""
    patchelf = shutil.which("patchelf")
    if patchelf is None:
        raise RuntimeError("patchelf is needed to cache llama-server: apt-get install patchelf")
    for item in sorted(folder.iterdir()):
        if item.is_file() and not item.is_symlink():
            current = subprocess.run([patchelf, "--print-rpath", str(item)], capture_output=True,
                                     text=True, check=True).stdout.strip()
            if current != "$ORIGIN":
                subprocess.run([patchelf, "--set-rpath", "$ORIGIN", str(item)], check=True)


def build_cross_package(
    version: str, cache: Path, machine: str, sdist: Path | None = None, jobs: int = 2
) -> Path:
    """Return the cached `llama_cpp` package cross-built for `machine`, building it if missing.

    The package is llama-cpp-python's pure-Python `llama_cpp` from the sdist with its shared
    libraries, ggml's CPU variants and libmtmd for `machine` in `llama_cpp/lib`: what a wheel
    for that machine installs. Compiles run at the lowest priority (`nice -n 19`).
    """
    extra = (*WHEEL_OPTIONS, "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")
    work = cache / settings_tag(version, extra, machine=machine)
    target = work / "llama_cpp"
    if (target / "lib").is_dir():
        return target
    # Sources and build folder stay in the cache until the package is made, so a build that
    # was stopped goes on where it was rather than from scratch.
    src, build_dir, staging = work / "src", work / "build", work / "staging"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-cross-") as tmp:
        roots = sorted(p.parent.parent for p in src.glob("*/vendor/llama.cpp"))
        if roots:
            root = roots[0]
        else:
            shutil.rmtree(src, ignore_errors=True)
            root = unpack(sdist or download_sdist(version, Path(tmp)), src, machine)
        toolchain = work / f"{machine}.cmake"
        toolchain.write_text(cross_toolchain(machine))
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = [
            "cmake", "-S", str(root), "-B", str(build_dir), *generator,
            f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", "-DCMAKE_BUILD_TYPE=Release",
            f"-DSKBUILD_PLATLIB_DIR={staging}", f"-DCMAKE_INSTALL_PREFIX={staging}",
            *cmake_args(extra, machine=machine),
        ]  # fmt: skip
        subprocess.run(configure, check=True, stdout=sys.stderr)
        build = ["nice", "-n", "19", "cmake", "--build", str(build_dir), "-j", str(jobs)]
        subprocess.run(build, check=True, stdout=sys.stderr)
        subprocess.run(["cmake", "--install", str(build_dir)], check=True, stdout=sys.stderr)
    # The install writes into the source tree's llama_cpp/lib and SKBUILD_PLATLIB_DIR: take the
    # package's Python files from the sdist and every shared library from the staging folder.
    package = root / "llama_cpp"
    shutil.rmtree(package / "lib", ignore_errors=True)
    (package / "lib").mkdir()
    for lib in (staging / "llama_cpp" / "lib").iterdir():
        if ".so" in lib.name:
            shutil.copy2(lib, package / "lib" / lib.name, follow_symlinks=True)
    staged = work / "llama_cpp.partial"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(package, staged, ignore=shutil.ignore_patterns("__pycache__"))
    staged.replace(target)
    for done in (src, build_dir, staging):
        shutil.rmtree(done, ignore_errors=True)
    return target


def _quoted(arg: str) -> str:
    # CMAKE_ARGS is split like a shell line by scikit-build-core.
    return f'"{arg}"' if " " in arg else arg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("wheel", "server", "libs", "tag"))
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
    parser.add_argument(
        "--machine", choices=sorted(CROSS_TRIPLETS), default="aarch64", help="libs: target CPU"
    )
    args = parser.parse_args(argv)
    if args.what == "wheel":
        print(build_wheel(args.version, args.cache, args.sdist, args.flavor))
    elif args.what == "server":
        print(build_server(args.version, args.cache, args.sdist, args.jobs))
    elif args.what == "libs":
        print(build_cross_package(args.version, args.cache, args.machine, args.sdist, args.jobs))
    else:
        print(wheel_dir(args.cache, args.version, args.flavor))


if __name__ == "__main__":
    main()
