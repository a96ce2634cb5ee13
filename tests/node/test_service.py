"""The node's model lifecycle in-process, on ScriptedModel (a fake model): loads, swaps, paths."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edgecloud.api.errors import APIError
from edgecloud.node.config import NodeConfig
from edgecloud.node.metrics import NodeMetrics
from edgecloud.node.service import ModelState, NodeService
from tests.node.scripted_backend import ScriptedModel

SAFETY_S = 20.0  # bounds a hang; never a timing assertion


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(SAFETY_S):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    (d / "a.gguf").write_bytes(b"GGUF a")
    (d / "b.gguf").write_bytes(b"GGUF b")
    (tmp_path / "outside.gguf").write_bytes(b"GGUF outside")
    (d / "link.gguf").symlink_to(tmp_path / "outside.gguf")
    ScriptedModel.instances.clear()
    ScriptedModel.opened.set()
    return d


def service(models: Path, **settings: object) -> NodeService:
    config = NodeConfig(model=str(models / "a.gguf"), warmup=False, parallel=2, **settings)
    return NodeService(config, NodeMetrics(), open_model=ScriptedModel, prove=None)


def test_a_preload_racing_a_swap_installs_both_in_turn_and_frees_the_first(models: Path) -> None:
    async def main() -> None:
        ScriptedModel.opened.clear()  # hold the preload's open until the swap is queued
        svc = service(models)
        preload = asyncio.create_task(svc.ensure_loaded())
        await until(lambda: svc.state is ModelState.LOADING)
        swap = asyncio.create_task(svc.swap(str(models / "b.gguf"), "2.0.0"))
        await asyncio.sleep(0.01)
        ScriptedModel.opened.set()
        first, info = await preload, await swap
        assert svc.current is not None and svc.current.model is ScriptedModel.instances[1]
        assert info.sha256 == hashlib.sha256(b"GGUF b").hexdigest() and info.version == "2.0.0"
        await until(lambda: ScriptedModel.instances[0].freed == 1)  # drained, then freed
        await svc.shutdown()
        assert [m.freed for m in ScriptedModel.instances] == [1, 1]
        assert first.model is ScriptedModel.instances[0]

    asyncio.run(main())


def test_a_load_that_ends_after_shutdown_is_freed_not_installed(models: Path) -> None:
    async def main() -> None:
        ScriptedModel.opened.clear()
        svc = service(models)
        preload = asyncio.create_task(svc.ensure_loaded())
        await until(lambda: svc.state is ModelState.LOADING)
        preload.cancel()  # what the lifespan does at shutdown
        await svc.shutdown()
        ScriptedModel.opened.set()
        await until(lambda: bool(ScriptedModel.instances) and ScriptedModel.instances[0].freed)
        assert svc.current is None and svc.state is ModelState.STOPPED
        with pytest.raises(APIError) as err:
            await svc.ensure_loaded()
        assert err.value.status == 503

    asyncio.run(main())


def test_a_second_swap_while_one_runs_is_409(models: Path) -> None:
    async def main() -> None:
        svc = service(models)
        await svc.ensure_loaded()
        ScriptedModel.opened.clear()
        first = asyncio.create_task(svc.swap(str(models / "b.gguf"), None))
        await until(lambda: svc.state is ModelState.SWAPPING)
        with pytest.raises(APIError) as err:
            await svc.swap(str(models / "a.gguf"), None)
        assert (err.value.status, err.value.code) == (409, "swap_in_progress")
        ScriptedModel.opened.set()
        await first
        await svc.shutdown()
        assert all(m.freed == 1 for m in ScriptedModel.instances)

    asyncio.run(main())


@pytest.mark.parametrize("name", ["../outside.gguf", "link.gguf", "/etc/hostname"])
def test_swap_only_loads_files_under_the_model_directories(models: Path, name: str) -> None:
    async def main() -> None:
        svc = service(models)
        with pytest.raises(APIError) as err:
            await svc.swap(os.path.join(models, name), None)
        assert (err.value.status, err.value.code) == (403, "model_path_not_allowed")
        assert ScriptedModel.instances == []  # refused before anything was opened

    asyncio.run(main())


def test_configured_model_dirs_replace_the_startup_models_directory(
    models: Path, tmp_path: Path
) -> None:
    async def main() -> None:
        svc = service(models, model_dirs=[str(tmp_path)])
        info = await svc.swap(str(tmp_path / "outside.gguf"), None)
        assert info.sha256 == hashlib.sha256(b"GGUF outside").hexdigest()
        svc_default = service(models)
        assert await svc_default.model_dirs() == [os.path.realpath(models)]
        await svc.shutdown()

    asyncio.run(main())


def test_a_broken_engine_makes_the_node_unready_and_refuses_with_503(models: Path) -> None:
    from edgecloud.node.engine import GenerationRequest

    async def main() -> None:
        svc = service(models)
        loaded = await svc.ensure_loaded()
        assert svc.ready
        model = ScriptedModel.instances[0]
        model.on_decode = lambda call: (_ for _ in ()).throw(RuntimeError("decode fault"))
        model.clear_memory = lambda: (_ for _ in ()).throw(RuntimeError("clear"))  # type: ignore[method-assign]
        req = GenerationRequest(list(b"hi"), 4)
        svc.submit(loaded, req)
        while (await asyncio.wait_for(req.events.get(), SAFETY_S)).finish_reason is None:
            pass
        await until(lambda: not svc.ready)
        with pytest.raises(APIError) as refused:
            svc.submit(loaded, GenerationRequest(list(b"again"), 4))
        assert refused.value.status == 503
        await svc.shutdown()

    asyncio.run(main())


def test_prompts_are_tokenised_off_the_event_loop_and_impossible_ones_refused_unread(
    models: Path,
) -> None:
    import threading

    async def main() -> None:
        svc = service(models)
        loaded = await svc.ensure_loaded()
        model = ScriptedModel.instances[0]
        gate, seen = threading.Event(), []
        real = model.tokenize

        def slow(text: str) -> list[int]:
            seen.append(len(text))
            assert gate.wait(SAFETY_S)
            return real(text)

        model.tokenize = slow  # type: ignore[method-assign]
        task = asyncio.ensure_future(svc.tokenize(loaded, "hello"))
        await until(lambda: seen == [5])  # the loop runs while the tokeniser works
        assert not task.done()
        gate.set()
        assert await task == list(b"hello")
        with pytest.raises(APIError) as refused:
            await svc.tokenize(loaded, "x" * (model.n_ctx_seq * 256))
        assert refused.value.code == "context_length_exceeded" and seen == [5]
        await svc.shutdown()

    asyncio.run(main())
