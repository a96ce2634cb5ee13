"""llama.cpp's build and CPU kernels: no AMX anywhere, a variant chosen at run time, a self-check
that turns a crashing kernel into a clear error instead of a dead node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgecloud.api.errors import APIError
from edgecloud.node import kernels, llama_build
from edgecloud.node.config import NodeConfig
from edgecloud.node.kernels import CheckOutcome, KernelCheckFailed, diagnose, prove_kernels
from edgecloud.node.metrics import NodeMetrics
from edgecloud.node.service import ModelState, NodeService
from tests.node.scripted_backend import ScriptedModel

SPR_FLAGS = frozenset("fpu sse4_2 avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8".split())
AVX2_FLAGS = frozenset("fpu sse4_2 avx avx2 fma f16c bmi2".split())


# -- the build -------------------------------------------------------------------------------
def _disassembly_hits(lib: Path) -> list[str]:
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(lib)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [m for m in llama_build.AMX_MNEMONICS if f"\t{m}" in out or f" {m} " in out]


@pytest.mark.skipif(not llama_build.is_x86(), reason="AMX is an x86 extension")
def test_no_library_of_the_installed_build_holds_amx_instructions() -> None:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to prove the build has no AMX kernels"
    libs = sorted(kernels.library_dir().glob("*.so*"))
    assert libs, "llama-cpp-python ships no shared libraries?"
    for lib in libs:
        if lib.is_symlink():
            continue
        assert _disassembly_hits(lib) == [], f"{lib.name} holds AMX instructions"


def test_the_installed_build_is_portable_and_has_no_amx_variant() -> None:
    names = [p.name for p in kernels.cpu_variant_files(kernels.library_dir())]
    assert len(names) >= 3, f"one CPU backend per CPU generation expected, found {names}"
    assert not any("sapphirerapids" in n or "amx" in n for n in names)


def test_the_node_runs_a_cpu_variant_this_cpu_supports() -> None:
    code = (
        "from edgecloud.node.model import _init_backend; from edgecloud.node.kernels import "
        "active_variant; _init_backend(); print(active_variant())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    variant = out.stdout.strip()
    assert variant not in ("", "None", "sapphirerapids")
    assert (kernels.library_dir() / f"libggml-cpu-{variant}.so").exists()


def test_the_amx_variant_is_dropped_from_the_recipe_and_a_moved_recipe_fails(
    tmp_path: Path,
) -> None:
    src = tmp_path / "ggml" / "src"
    src.mkdir(parents=True)
    cmake = src / "CMakeLists.txt"
    cmake.write_text(
        "ggml_add_cpu_backend_variant(icelake SSE42 AVX512)\n"
        "ggml_add_cpu_backend_variant(sapphirerapids SSE42 AVX512 AMX_TILE AMX_INT8)\n"
    )
    llama_build.drop_amx_variant(tmp_path)
    assert "sapphirerapids" not in cmake.read_text() and "icelake" in cmake.read_text()
    with pytest.raises(RuntimeError, match="sapphirerapids"):
        llama_build.drop_amx_variant(tmp_path)  # the line is gone: the recipe must be looked at


def test_the_wheel_cache_path_carries_the_build_settings(tmp_path: Path) -> None:
    here = llama_build.wheel_dir(tmp_path, "0.3.36")
    assert here.parent == tmp_path and here.name.startswith("0.3.36-")
    # A wheel built before this recipe lay in the cache root itself: never looked at now.
    assert here != tmp_path
    assert llama_build.settings_tag("0.3.36", ("-DX=1",)) != llama_build.settings_tag("0.3.36")
    assert llama_build.settings_tag("0.3.37") != llama_build.settings_tag("0.3.36")
    args = llama_build.cmake_args()
    assert "-DGGML_BACKEND_DL=ON" in args and "-DGGML_CPU_ALL_VARIANTS=ON" in args
    if llama_build.is_x86():
        assert any("-mno-amx-int8" in a for a in args if a.startswith("-DCMAKE_CXX_FLAGS"))


# -- diagnosis ---------------------------------------------------------------------------------
def test_a_segfault_on_an_amx_cpu_names_amx_the_issue_and_the_build_setting() -> None:
    msg = diagnose(CheckOutcome(-signal.SIGSEGV, "", "zen4"), SPR_FLAGS, "m.gguf")
    assert "SIGSEGV" in msg and "amx_tile amx_int8 amx_bf16" in msg and "20824" in msg
    assert "-mno-amx-int8" in msg and "GGML_BACKEND_DL=ON" in msg and "make setup" in msg
    assert "zen4" in msg and "m.gguf" in msg


def test_sigill_says_the_library_was_built_for_another_cpu() -> None:
    msg = diagnose(CheckOutcome(-signal.SIGILL, ""), AVX2_FLAGS, "m.gguf")
    assert "SIGILL" in msg and "GGML_NATIVE" in msg and "AMX" not in msg.split("Rebuild")[0]


def test_a_hang_and_a_plain_error_are_reported_with_their_output() -> None:
    assert "did not finish" in diagnose(CheckOutcome(None, ""), AVX2_FLAGS, "m.gguf")
    msg = diagnose(CheckOutcome(1, "a\nb\nGGML_ASSERT failed\n"), AVX2_FLAGS, "m.gguf")
    assert "exited 1" in msg and "GGML_ASSERT failed" in msg
    segv_no_amx = diagnose(CheckOutcome(-signal.SIGSEGV, ""), AVX2_FLAGS, "m.gguf")
    assert "SIGSEGV" in segv_no_amx and "20824" not in segv_no_amx


def test_cpu_flags_are_read_on_x86_and_arm() -> None:
    assert "avx2" in kernels.cpu_flags("processor\t: 0\nflags\t\t: fpu avx2 amx_int8\n")
    assert "asimddp" in kernels.cpu_flags("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert kernels.cpu_flags("nothing here\n") == frozenset()


# -- the check, with real child processes ------------------------------------------------------
@pytest.mark.parametrize("sig", ["SIGSEGV", "SIGILL"])
def test_a_child_that_crashes_becomes_a_kernel_check_failure(sig: str) -> None:
    crash = [sys.executable, "-c", f"import os, signal; os.kill(os.getpid(), signal.{sig})"]
    with pytest.raises(KernelCheckFailed, match=sig):
        prove_kernels("m.gguf", child=crash, mode="always")


@pytest.mark.skipif(not llama_build.is_x86(), reason="emulates an older x86 CPU")
def test_the_same_wheel_decodes_on_an_older_cpu_with_its_own_kernels(
    embedded_model_path: str,
) -> None:
    """Under qemu-user emulating a Nehalem (SSE4.2, no AVX), ggml picks the sse42 variant and
    the check decodes: a native build from an AVX-512 machine dies there with SIGILL."""
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    assert qemu, "qemu-user-static is needed to run the wheel on an emulated older CPU"
    argv = [qemu, "-cpu", "Nehalem", sys.executable, "-m", "edgecloud.node.kernels", "--child",
            "--model", embedded_model_path]
    outcome = kernels.run_check(argv, timeout_s=600)
    assert outcome.returncode == 0, outcome.stderr_tail
    assert outcome.variant == "sse42"


def test_a_child_that_hangs_is_cut_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "CHECK_TIMEOUT_S", 1.0)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(KernelCheckFailed, match="did not finish"):
        prove_kernels("m.gguf", child=hang, mode="always")


def test_a_slower_machine_gives_the_check_more_time_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLOUD_KERNEL_CHECK_TIMEOUT", "1")
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(KernelCheckFailed, match="did not finish in 1 s"):
        prove_kernels("m.gguf", child=hang, mode="always")
    monkeypatch.setenv("EDGECLOUD_KERNEL_CHECK_TIMEOUT", "soon")  # not a number: the default
    assert kernels.check_timeout_s() == kernels.CHECK_TIMEOUT_S


def test_the_real_check_passes_here_and_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedded_model_path: str
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    variant = prove_kernels(embedded_model_path, mode="auto")
    assert variant and variant != "sapphirerapids"
    marks = list((tmp_path / "edgecloud" / "kernel-checks").iterdir())
    assert len(marks) == 1 and json.loads(marks[0].read_text()) == {"variant": variant}

    def no_second_run(argv: list[str], timeout_s: float | None = None) -> CheckOutcome:
        raise AssertionError("a passed check on the same build, CPU and model ran again")

    monkeypatch.setattr(kernels, "run_check", no_second_run)
    assert prove_kernels(embedded_model_path, mode="auto") == variant


def test_a_file_llama_cpp_cannot_load_is_left_to_the_loader(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    assert prove_kernels(str(bad), mode="always") is None


def test_setup_check_command_prints_the_variant(embedded_model_path: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgecloud.node.kernels", "--model", embedded_model_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "llama.cpp kernels: ok (CPU variant:" in out.stdout


# -- the node ----------------------------------------------------------------------------------
def _crashing_prover(path: str) -> str | None:
    raise KernelCheckFailed(diagnose(CheckOutcome(-signal.SIGSEGV, ""), SPR_FLAGS, path))


def test_a_failed_check_never_loads_the_model_and_every_request_says_why(tmp_path: Path) -> None:
    model = tmp_path / "a.gguf"
    model.write_bytes(b"GGUF a")
    ScriptedModel.instances.clear()
    ScriptedModel.opened.set()
    config = NodeConfig(model=str(model), warmup=False, parallel=2)
    svc = NodeService(config, NodeMetrics(), open_model=ScriptedModel, prove=_crashing_prover)

    async def main() -> None:
        for _ in range(2):  # the second request is answered from the recorded failure
            with pytest.raises(APIError) as err:
                await svc.ensure_loaded()
            assert err.value.status == 503 and "amx_int8" in err.value.message
        assert svc.state is ModelState.FAILED and svc.kernel_error is not None
        assert ScriptedModel.instances == []  # never opened in the node's own process
        await svc.shutdown()

    asyncio.run(main())


def test_a_swap_to_a_model_whose_kernels_crash_keeps_the_old_model(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.gguf", tmp_path / "bad.gguf"
    good.write_bytes(b"GGUF good")
    bad.write_bytes(b"GGUF bad")
    ScriptedModel.instances.clear()
    ScriptedModel.opened.set()

    def prover(path: str) -> str | None:
        return "haswell" if path == os.path.realpath(good) else _crashing_prover(path)

    config = NodeConfig(model=str(good), warmup=False, parallel=2, model_dirs=[str(tmp_path)])
    svc = NodeService(config, NodeMetrics(), open_model=ScriptedModel, prove=prover)

    async def main() -> None:
        first = await svc.ensure_loaded()
        with pytest.raises(APIError) as err:
            await svc.swap(str(bad), "2.0.0")
        assert err.value.status == 400 and "SIGSEGV" in err.value.message
        assert svc.current is first and svc.state is ModelState.READY
        assert svc.cpu_variant == "haswell"
        await svc.shutdown()

    asyncio.run(main())


def test_the_node_reports_its_cpu_variant_in_metrics(node: str) -> None:
    text = httpx.get(node + "/metrics", timeout=10).text
    lines = [ln for ln in text.splitlines() if ln.startswith("edgecloud_node_cpu_variant_info{")]
    assert len(lines) == 1 and lines[0].endswith(" 1.0")
    variant = lines[0].split('variant="', 1)[1].split('"', 1)[0]
    assert (kernels.library_dir() / f"libggml-cpu-{variant}.so").exists()
