"""The engine's per-request extras on ScriptedBackend: grammar faults, logprobs, time limit."""

from __future__ import annotations

import time
from collections.abc import Sequence

from edgecloud.node.backend import SamplingParams
from edgecloud.node.engine import BatchEngine, GenerationRequest
from edgecloud.node.logprobs import TokenLogprob
from tests.node.scripted_backend import ScriptedBackend, ScriptedSampler
from tests.node.test_engine import collect, prompt, run


class _LogprobSampler(ScriptedSampler):
    def logprob(self, batch_index: int, token: int) -> TokenLogprob:  # type: ignore[override]
        return TokenLogprob(token, -0.5, ((token, -0.5),))


class _DeadEndSampler(ScriptedSampler):
    def sample(self, batch_index: int) -> int:
        return -1  # what a grammar that allows nothing returns


class _Extras(ScriptedBackend):
    def new_sampler(self, spec: SamplingParams, prompt: Sequence[int]) -> ScriptedSampler:
        if spec.grammar == "refused":
            raise ValueError("llama.cpp could not parse the grammar")
        kind = _DeadEndSampler if spec.grammar == "dead" else _LogprobSampler
        sampler = kind(self, self.reply(prompt))
        self.samplers.append(sampler)
        return sampler


def test_refused_grammar_and_dead_end_fail_only_their_request() -> None:
    backend = _Extras(reply=lambda p: b"abc")

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        refused = GenerationRequest(prompt("x"), 8, SamplingParams(grammar="refused"))
        dead = GenerationRequest(prompt("y"), 8, SamplingParams(grammar="dead"))
        free = GenerationRequest(prompt("z"), 8, SamplingParams(logprobs=1))
        for req in (refused, dead, free):
            assert engine.submit(req)
        return await collect(refused), await collect(dead), await collect(free)

    (_, _, why_r), (ev_d, _, why_d), (events, text, why_f) = run(backend, body)
    assert why_r == "error" and why_d == "error" and "grammar" in (ev_d[-1].error or "")
    assert (text, why_f) == ("abc", "stop")
    entries = [e for ev in events for e in ev.logprobs]
    assert [e.token for e in entries] == [*b"abc", 0]  # the end token too; replies trim it
    assert all(s.freed for s in backend.samplers)


def test_time_limit_ends_generation_with_length() -> None:
    backend = _Extras(reply=lambda p: b"a long answer")

    async def body(engine: BatchEngine):  # type: ignore[no-untyped-def]
        req = GenerationRequest(prompt("q"), 64, deadline=time.perf_counter() - 1)
        assert engine.submit(req)
        return await collect(req)

    _, text, why = run(backend, body)
    assert (text, why) == ("a", "length")
