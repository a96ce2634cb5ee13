"""The batch engine in-process, on ScriptedBackend (a fake model): fast, deterministic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from edgecloud.api.errors import QueueFull
from edgecloud.node.config import NodeConfig
from edgecloud.node.engine import BatchEngine, GenerationRequest, SlotState, StreamEvent
from edgecloud.node.metrics import NodeMetrics
from edgecloud.node.service import Loaded, NodeService
from tests.node.scripted_backend import ScriptedBackend

SAFETY_S = 20.0  # bounds a hang; never a timing assertion


def prompt(text: str) -> list[int]:
    return list(text.encode())


def by_prompt(replies: dict[str, bytes]) -> object:
    def reply(p: Sequence[int]) -> bytes:
        return replies[bytes(p).decode()]

    return reply


async def collect(req: GenerationRequest) -> tuple[list[StreamEvent], str, str | None]:
    events: list[StreamEvent] = []
    while True:
        ev = await asyncio.wait_for(req.events.get(), SAFETY_S)
        events.append(ev)
        if ev.finish_reason is not None:
            return events, "".join(e.text for e in events), ev.finish_reason


def run(backend: ScriptedBackend, body, max_queue: int = 16):  # type: ignore[no-untyped-def]
    """Run `body(engine)` on an engine over `backend` in a fresh event loop; stop it after."""

    async def main():  # type: ignore[no-untyped-def]
        engine = BatchEngine(backend, asyncio.get_running_loop(), max_queue)
        engine.start()
        try:
            return await body(engine)
        finally:
            await asyncio.to_thread(engine.stop)

    return asyncio.run(main())


def generate(engine: BatchEngine, text: str, max_tokens: int = 64, stop: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    req = GenerationRequest(prompt(text), max_tokens, stop=stop)
    assert engine.submit(req)
    return req


def test_replies_end_at_end_of_generation_and_at_max_tokens() -> None:
    backend = ScriptedBackend(reply=lambda p: b"hello world")

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        a = generate(engine, "say", max_tokens=64)
        b = generate(engine, "cut", max_tokens=5)
        return await collect(a), await collect(b), a, b

    (_, text_a, why_a), (_, text_b, why_b), a, b = run(backend, body)
    assert (text_a, why_a, a.output_tokens) == ("hello world", "stop", 12)  # 11 + end token
    assert (text_b, why_b, b.output_tokens) == ("hello", "length", 5)
    assert backend.freed == 1
    assert all(s.freed for s in backend.samplers)


def test_stop_string_is_held_back_across_tokens_and_never_emitted() -> None:
    backend = ScriptedBackend(
        reply=by_prompt({"a": b"abc<|end|>tail", "b": b"x<|e<|en", "c": "caf\u00e9!".encode()})
    )

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        reqs = [generate(engine, k, stop=("<|end|>",)) for k in "abc"]
        return [await collect(r) for r in reqs]

    (ev_a, text_a, why_a), (ev_b, text_b, why_b), (ev_c, text_c, why_c) = run(backend, body)
    assert (text_a, why_a) == ("abc", "stop")
    assert all("<" not in e.text for e in ev_a)  # the stop string's start was held, then dropped
    # A partial match that never completes is released: in full, and only once.
    assert (text_b, why_b) == ("x<|e<|en", "stop")
    assert [e.text for e in ev_b if e.text] == ["x", "<|e", "<|en"]
    # A character split across tokens is emitted whole.
    assert (text_c, why_c) == ("caf\u00e9!", "stop")
    assert all("\ufffd" not in e.text for e in ev_c)


def test_held_text_is_flushed_when_max_tokens_ends_the_reply() -> None:
    backend = ScriptedBackend(reply=lambda p: b"ab<|en")

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        return await collect(generate(engine, "q", max_tokens=5, stop=("<|end|>",)))

    _, text, why = run(backend, body)
    assert (text, why) == ("ab<|e", "length")


def test_next_turn_reuses_the_cached_prefix_and_reads_only_new_tokens() -> None:
    backend = ScriptedBackend(n_seq=2, reply=lambda p: b"xy")

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        first = generate(engine, "hello there")
        await collect(first)
        n_batches = len(backend.batches)
        second = generate(engine, "hello therexy and more")
        await collect(second)
        return first, second, backend.batches[n_batches]

    first, second, batch = run(backend, body)
    assert first.cached_tokens == 0
    # The slot holds the prompt and the tokens fed back ("x", "y"): all reused.
    assert second.cached_tokens == len("hello therexy")
    assert [e.pos for e in batch] == list(
        range(len("hello therexy"), len("hello therexy and more"))
    )


def test_a_prompt_equal_to_the_cache_still_decodes_its_last_token() -> None:
    backend = ScriptedBackend(n_seq=1, reply=lambda p: b"z")

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        await collect(generate(engine, "same prompt"))
        again = generate(engine, "same prompt")
        _, text, _ = await collect(again)
        return again, text

    again, text = run(backend, body)
    assert (again.cached_tokens, text) == (len("same prompt") - 1, "z")


def test_cancel_mid_batch_frees_the_slot_and_others_finish() -> None:
    backend = ScriptedBackend(n_seq=2, reply=by_prompt({"long": b"x" * 40, "other": b"y" * 20}))
    holder: dict[str, GenerationRequest] = {}
    backend.on_decode = lambda call: holder["long"].cancel() if call == 4 else None

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        holder["long"] = long = generate(engine, "long")
        other = generate(engine, "other")
        long_out, other_out = await collect(long), await collect(other)
        after = await collect(generate(engine, "other"))  # the freed slot serves again
        return long_out, other_out, after, engine

    (_, long_text, long_why), (_, other_text, other_why), after, engine = run(backend, body)
    assert long_why == "cancelled" and len(long_text) < 40
    assert (other_text, other_why) == ("y" * 20, "stop")
    assert after[1:] == ("y" * 20, "stop")
    assert all(s.state is SlotState.IDLE for s in engine.slots) and engine.active_slots == 0


def test_a_failed_decode_fails_every_request_in_it_and_the_engine_keeps_serving() -> None:
    backend = ScriptedBackend(n_seq=3, reply=lambda p: b"abcdefgh")
    backend.fail_decodes = {3}

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        reqs = [generate(engine, f"p{i}") for i in range(3)]
        failed = [await collect(r) for r in reqs]
        again = generate(engine, "p0")
        return failed, await collect(again), again

    failed, (_, text, why), again = run(backend, body)
    assert [f[2] for f in failed] == ["error"] * 3
    assert all(f[0][-1].error and "decode failed" in f[0][-1].error for f in failed)
    assert (text, why) == ("abcdefgh", "stop")
    assert again.cached_tokens == 0  # the cache was cleared, not trusted


def test_queue_limit_refuses_beyond_slots_plus_queue_and_the_service_answers_429() -> None:
    backend = ScriptedBackend(n_seq=2, reply=lambda p: b"done")
    backend.gate.clear()  # hold every decode until the queue has been tried

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        accepted = [GenerationRequest(prompt(f"r{i}"), 8) for i in range(3)]
        assert all(engine.submit(r) for r in accepted)
        extra = GenerationRequest(prompt("r3"), 8)
        refused = not engine.submit(extra)
        service = NodeService(NodeConfig(parallel=2, max_queue=1), NodeMetrics())
        loaded = Loaded(backend, engine, None)  # type: ignore[arg-type]
        with pytest.raises(QueueFull) as err:
            service.submit(loaded, extra)
        backend.gate.set()
        done = [await collect(r) for r in accepted]
        assert engine.submit(extra)  # room again
        return refused, err.value, done, await collect(extra)

    refused, err, done, extra = run(backend, body, max_queue=1)
    assert refused and err.status == 429 and err.headers.get("retry-after") == "1"
    assert [d[1:] for d in done] == [("done", "stop")] * 3 and extra[1:] == ("done", "stop")


@pytest.mark.parametrize(("n_seq", "n_batch"), [(16, 4), (8, 8), (5, 3)])
def test_the_batch_is_never_overfilled_whatever_the_slot_count(n_seq: int, n_batch: int) -> None:
    backend = ScriptedBackend(n_seq=n_seq, n_batch=n_batch, reply=lambda p: bytes(p[-1:]) * 9)

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        reqs = [generate(engine, chr(65 + i % 26) * (1 + i * 3)) for i in range(n_seq * 2)]
        return [await collect(r) for r in reqs]

    results = run(backend, body)
    assert [r[1:] for r in results] == [(chr(65 + i % 26) * 9, "stop") for i in range(n_seq * 2)]
    assert max(len(b) for b in backend.batches) <= n_batch
    assert any(len(b) == n_batch for b in backend.batches)


def test_stop_cancels_waiting_and_running_requests_and_frees_the_model_once() -> None:
    backend = ScriptedBackend(n_seq=1, reply=lambda p: b"z" * 100)
    backend.gate.clear()

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        reqs = [generate(engine, "a"), generate(engine, "b")]
        stopping = asyncio.create_task(asyncio.to_thread(engine.stop))
        async with asyncio.timeout(SAFETY_S):
            while not engine._stopping:  # stop is asked while the first decode still runs
                await asyncio.sleep(0.005)
        backend.gate.set()
        await stopping
        return [await collect(r) for r in reqs]

    results = run(backend, body)
    assert [r[2] for r in results] == ["cancelled", "cancelled"]
    assert backend.freed == 1


def test_an_empty_prompt_is_an_error_not_a_stuck_slot() -> None:
    backend = ScriptedBackend(n_seq=1)

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        empty = GenerationRequest([], 8)
        assert engine.submit(empty)
        return await collect(empty), await collect(generate(engine, "next"))

    (events, _, why), after = run(backend, body)
    assert why == "error" and events[-1].error == "empty prompt"
    assert after[1:] == ("ok", "stop")


def test_a_step_that_raises_fails_its_requests_and_the_engine_keeps_serving() -> None:
    backend = ScriptedBackend(n_seq=2, reply=lambda p: b"abcdef")

    def boom(call: int) -> None:
        if call == 2:
            raise RuntimeError("backend fault")

    backend.on_decode = boom

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        failed = [await collect(r) for r in (generate(engine, "p0"), generate(engine, "p1"))]
        return failed, await collect(generate(engine, "p2")), engine

    failed, (_, text, why), engine = run(backend, body)
    assert [f[2] for f in failed] == ["error", "error"]
    assert all("RuntimeError" in (f[0][-1].error or "") for f in failed)
    assert (text, why) == ("abcdef", "stop")
    assert engine.broken is None and engine.active_slots == 0


def test_a_sampler_that_cannot_be_made_fails_that_request_only() -> None:
    backend = ScriptedBackend(n_seq=1, reply=lambda p: b"ok")
    real = backend.new_sampler
    calls = []

    def flaky(spec, prompt):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("no sampler")
        return real(spec, prompt)

    backend.new_sampler = flaky  # type: ignore[method-assign]

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        return await collect(generate(engine, "a")), await collect(generate(engine, "b")), engine

    (_, _, first), (_, text, second), engine = run(backend, body)
    assert (first, text, second) == ("error", "ok", "stop")
    assert engine.active_slots == 0


def test_an_engine_that_cannot_recover_cancels_everything_and_says_it_is_broken() -> None:
    backend = ScriptedBackend(n_seq=1, reply=lambda p: b"x" * 50)
    backend.on_decode = lambda call: (_ for _ in ()).throw(RuntimeError("decode fault"))
    backend.clear_memory = lambda: (_ for _ in ()).throw(RuntimeError("clear fault"))  # type: ignore[method-assign]

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        running, waiting = generate(engine, "a"), generate(engine, "b")
        ends = [await collect(running), await collect(waiting)]
        return ends, engine, engine.submit(GenerationRequest(prompt("c"), 4))

    ends, engine, accepted = run(backend, body)
    assert [e[2] for e in ends] == ["error", "cancelled"]
    assert engine.broken is not None and not accepted
    assert backend.freed == 1


def test_a_lease_keeps_the_model_until_it_ends_and_none_is_given_while_draining() -> None:
    backend = ScriptedBackend(n_seq=1)

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        assert engine.lease()
        engine.drain_and_free()
        await asyncio.sleep(0.05)
        held = backend.freed
        refused = not engine.lease()
        engine.unlease()
        for _ in range(400):
            if backend.freed:
                break
            await asyncio.sleep(0.005)
        return held, refused

    held, refused = run(backend, body)
    assert held == 0 and refused
    assert backend.freed == 1
