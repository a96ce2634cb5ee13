"""The arm64 half of the llama.cpp recipe, checked on any machine: the cross toolchain file that
`make check-arm64` builds with, the ARM variants an older compiler cannot build, and the cache
tag that keeps an arm64 build apart from an x86 one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgecloud.node import llama_build

CROSS_GCC = "aarch64-linux-gnu-gcc"
needs_cross_gcc = pytest.mark.skipif(
    shutil.which(CROSS_GCC) is None or shutil.which("cmake") is None,
    reason=f"{CROSS_GCC} and cmake are needed (Debian: gcc-aarch64-linux-gnu cmake)",
)


def test_the_toolchain_file_names_the_target_and_debians_cross_compilers() -> None:
    text = llama_build.cross_toolchain("aarch64")
    assert "set(CMAKE_SYSTEM_NAME Linux)" in text
    assert "set(CMAKE_SYSTEM_PROCESSOR aarch64)" in text
    assert "set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)" in text
    assert "set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)" in text
    assert "CMAKE_SYSROOT" not in text
    assert "set(CMAKE_SYSROOT /srv/arm64)" in llama_build.cross_toolchain(
        "aarch64", Path("/srv/arm64")
    )
    with pytest.raises(ValueError, match="riscv64"):
        llama_build.cross_toolchain("riscv64")


def test_arm64_builds_get_no_x86_flags_and_their_own_cache_tag() -> None:
    args = llama_build.cmake_args(machine="aarch64")
    assert "-DGGML_BACKEND_DL=ON" in args and "-DGGML_CPU_ALL_VARIANTS=ON" in args
    assert not any("amx" in a for a in args if a.startswith("-DCMAKE_C"))
    x86 = llama_build.cmake_args(machine="x86_64")
    assert any("-mno-amx-tile" in a for a in x86 if a.startswith("-DCMAKE_C_FLAGS"))
    tag = llama_build.settings_tag("0.3.36", machine="aarch64")
    assert tag.startswith("0.3.36-aarch64-")
    assert tag != llama_build.settings_tag("0.3.36", machine="x86_64")


def test_variants_the_compiler_cannot_build_are_taken_out_and_a_moved_recipe_fails(
    tmp_path: Path,
) -> None:
    cmake = tmp_path / "ggml" / "src" / "CMakeLists.txt"
    cmake.parent.mkdir(parents=True)
    cmake.write_text(
        "ggml_add_cpu_backend_variant(armv8.6_2    DOTPROD SVE MATMUL_INT8 SVE2)\n"
        "ggml_add_cpu_backend_variant(armv9.2_1    DOTPROD SVE MATMUL_INT8 SME)\n"
        "ggml_add_cpu_backend_variant(armv9.2_2    DOTPROD SVE MATMUL_INT8 SVE2 SME)\n"
    )
    llama_build.drop_variants(tmp_path, llama_build.SME_VARIANT_MARKS)
    assert (
        cmake.read_text()
        == "ggml_add_cpu_backend_variant(armv8.6_2    DOTPROD SVE MATMUL_INT8 SVE2)\n"
    )
    with pytest.raises(RuntimeError, match=r"armv9\.2_1"):
        llama_build.drop_variants(tmp_path, llama_build.SME_VARIANT_MARKS)


def test_x86_drops_no_arm_variant() -> None:
    assert llama_build.dropped_variants("x86_64") == ()


@needs_cross_gcc
def test_the_sme_probe_matches_what_the_cross_compiler_accepts(tmp_path: Path) -> None:
    source = tmp_path / "t.c"
    source.write_text("int main(void) { return 0; }\n")
    accepted = subprocess.run(
        [CROSS_GCC, "-march=armv9.2-a+sme", "-c", str(source), "-o", str(tmp_path / "t.o")],
        capture_output=True,
    )
    assert llama_build.compiler_has_sme(CROSS_GCC) is (accepted.returncode == 0)
    dropped = llama_build.dropped_variants("aarch64")
    assert dropped == (() if accepted.returncode == 0 else llama_build.SME_VARIANT_MARKS)


def test_a_build_without_the_sme_variants_is_cached_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_build, "compiler_has_sme", lambda cc: True)
    with_sme = llama_build.settings_tag("0.3.36", machine="aarch64")
    monkeypatch.setattr(llama_build, "compiler_has_sme", lambda cc: False)
    assert llama_build.settings_tag("0.3.36", machine="aarch64") != with_sme


@needs_cross_gcc
def test_the_toolchain_file_cross_builds_an_arm64_shared_library(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.21)\nproject(probe C)\n"
        "add_library(probe SHARED probe.c)\n"
        'message(STATUS "target processor: ${CMAKE_SYSTEM_PROCESSOR}")\n'
    )
    (src / "probe.c").write_text("int probe(int x) { return 2 * x; }\n")
    toolchain = tmp_path / "aarch64.cmake"
    toolchain.write_text(llama_build.cross_toolchain("aarch64"))
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={toolchain}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert configure.returncode == 0, configure.stderr
    assert "target processor: aarch64" in configure.stdout
    done = subprocess.run(
        ["cmake", "--build", str(build)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    header = (build / "libprobe.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == 183  # e_machine: EM_AARCH64
