"""Images in the batch engine, in-process on ScriptedBackend: scheduling, reuse, failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from edgecloud.node.backend import MEDIA_TOKEN
from edgecloud.node.engine import BatchEngine, GenerationRequest
from tests.node.scripted_backend import ScriptedBackend
from tests.node.test_engine import collect, run


@dataclass
class FakeImage:
    n_tokens: int


@dataclass
class FakeMedia:
    items: list[FakeImage]
    freed: int = 0
    log: list[str] = field(default_factory=list)

    def free(self) -> None:
        self.freed += 1


def image_request(text: str, n_image: int = 16, max_tokens: int = 4) -> GenerationRequest:
    """`text`, one image of `n_image` tokens, then a short tail (a prompt ends with text)."""
    tokens = list(text.encode()) + [MEDIA_TOKEN] * n_image + list(b"\nA:")
    return GenerationRequest(tokens, max_tokens, media=FakeMedia([FakeImage(n_image)]))


def text_request(text: str, max_tokens: int = 12) -> GenerationRequest:
    return GenerationRequest(list(text.encode()), max_tokens)


def long_reply(prompt: object) -> bytes:
    return b"abcdefghijklmnop"


def test_one_image_per_step_and_streams_keep_flowing() -> None:
    backend = ScriptedBackend(n_seq=4, n_batch=64, reply=long_reply)

    async def body(engine: BatchEngine) -> None:
        texts = [text_request(f"text {i}") for i in range(2)]
        for r in texts:
            assert engine.submit(r)
        await asyncio.sleep(0)  # let them start generating
        images = [image_request(f"look {i}: ") for i in range(2)]
        for r in images:
            assert engine.submit(r)
        results = await asyncio.gather(*(collect(r) for r in texts + images))
        assert all(fin in ("stop", "length") for _, _, fin in results)
        assert all(r.media is None for r in images)  # freed by the engine when they ended

    run(backend, body)
    kinds = [kind for kind, _ in backend.timeline]
    assert kinds.count("media") == 2
    # Never two images without a shared decode between them: the other slots' tokens flow.
    for a, b in zip(kinds, kinds[1:], strict=False):
        assert not (a == "media" and b == "media")


def test_prefix_reuse_stops_at_the_first_image() -> None:
    backend = ScriptedBackend(n_seq=1, n_batch=64)

    async def body(engine: BatchEngine) -> list[int]:
        cached = []
        for _ in range(2):  # the same text before a (new) image
            req = image_request("system prompt shared by both steps. ")
            assert engine.submit(req)
            await collect(req)
            cached.append(req.cached_tokens)
        return cached

    first, second = run(backend, body)
    assert first == 0 and second == len(b"system prompt shared by both steps. ")


def test_a_failed_image_fails_its_request_only() -> None:
    backend = ScriptedBackend(n_seq=2, n_batch=64, reply=long_reply)
    backend.fail_media = {1}

    async def body(engine: BatchEngine) -> None:
        bad = image_request("broken: ")
        media = bad.media
        good = text_request("fine")
        assert engine.submit(bad) and engine.submit(good)
        (_, _, bad_fin), (_, text, good_fin) = await asyncio.gather(collect(bad), collect(good))
        assert bad_fin == "error" and good_fin in ("stop", "length") and text
        assert isinstance(media, FakeMedia) and media.freed == 1
        again = image_request("after: ")
        assert engine.submit(again)
        assert (await collect(again))[2] in ("stop", "length")

    run(backend, body)


def test_media_is_freed_when_cancelled_waiting_and_at_shutdown() -> None:
    backend = ScriptedBackend(n_seq=1, n_batch=64, reply=long_reply)
    backend.gate.clear()  # hold the first decode so the others wait
    medias: list[FakeMedia] = []

    async def body(engine: BatchEngine) -> None:
        reqs = [image_request(f"r{i} ") for i in range(3)]
        for r in reqs:
            assert isinstance(r.media, FakeMedia)
            medias.append(r.media)
            assert engine.submit(r)
        reqs[2].cancel()
        backend.gate.set()
        await collect(reqs[0])

    run(backend, body)  # stops the engine with request 1 maybe still in flight
    assert [m.freed for m in medias] == [1, 1, 1]


def test_a_prompt_ending_with_an_image_is_an_error() -> None:
    backend = ScriptedBackend(n_seq=1, n_batch=64)

    async def body(engine: BatchEngine) -> str | None:
        req = GenerationRequest(list(b"x") + [MEDIA_TOKEN] * 4, 4, media=FakeMedia([FakeImage(4)]))
        assert engine.submit(req)
        return (await collect(req))[2]

    assert run(backend, body) == "error"
