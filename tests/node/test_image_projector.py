"""The libmtmd seam with the real embedded model and the generated projector."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp as ll
import pytest

from edgecloud.bench.workloads import png_bytes
from edgecloud.node.image_checks import DecodedImage, ImageLimits, ImageRef, decode_image
from edgecloud.node.image_projector import (
    ImageChunk,
    MultimodalTokenizeError,
    ProjectorClosed,
    ProjectorLoadError,
    VisionProjector,
)
from edgecloud.node.model import LoadedModel
from edgecloud.testing.tiny_mmproj import TowerShape, write_tiny_mmproj


@pytest.fixture(scope="module")
def model(embedded_model_path: str) -> Iterator[LoadedModel]:
    m = LoadedModel(embedded_model_path, model_id="m", n_seq=2, n_ctx_seq=512, n_threads=2)
    yield m
    m.free()


@pytest.fixture(scope="module")
def projector(model: LoadedModel, tiny_mmproj_path: str) -> Iterator[VisionProjector]:
    p = VisionProjector(tiny_mmproj_path, model, n_threads=2)
    yield p
    p.free()


@pytest.fixture(scope="module")
def screenshot() -> DecodedImage:
    data = png_bytes(7, 1080, 2400, target_bytes=300_000)
    return decode_image(ImageRef("img", "img", "data:"), data, ImageLimits())


def _decode_text(model: LoadedModel, tokens: list[int], pos: int, seq: int) -> int:
    batch = ll.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        assert ll.llama_decode(model.ctx, batch) == 0
    finally:
        ll.llama_batch_free(batch)
    return pos + len(tokens)


def test_generator_matches_the_model_width(tiny_mmproj_path: str) -> None:
    assert Path(tiny_mmproj_path).read_bytes()[:4] == b"GGUF"
    assert TowerShape().image_tokens == 64


def test_prompt_splits_into_text_image_text(
    model: LoadedModel, projector: VisionProjector, screenshot: DecodedImage
) -> None:
    prompt = f"User: what is on screen? {projector.marker}\nAssistant:"
    mp = projector.tokenize(prompt, [screenshot], add_special=True)
    try:
        kinds = [type(s).__name__ for s in mp.segments]
        assert kinds == ["list", "ImageChunk", "list"]
        image = mp.segments[1]
        assert isinstance(image, ImageChunk) and image.n_tokens == 64
        assert (mp.n_image_tokens, mp.n_images) == (64, 1)
        texts = [s for s in mp.segments if isinstance(s, list)]
        assert mp.n_tokens == 64 + sum(len(t) for t in texts)
        # The text before the image tokenises as plain text would (what prefix reuse compares).
        head = model.tokenize("User: what is on screen? ")
        assert mp.text_prefix[: len(head)] == head
    finally:
        mp.free()
        mp.free()  # idempotent


def test_encode_and_decode_then_generate(
    model: LoadedModel, projector: VisionProjector, screenshot: DecodedImage
) -> None:
    mp = projector.tokenize(f"{projector.marker} describe:", [screenshot], add_special=True)
    seq = 1
    ll.llama_memory_seq_rm(model.memory, seq, -1, -1)
    try:
        pos = 0
        for seg in mp.segments:
            if isinstance(seg, ImageChunk):
                embd = projector.encode(seg)
                assert embd.n_tokens == 64
                pos = projector.decode(seg, embd, pos, seq, model.n_batch)
            else:
                pos = _decode_text(model, seg, pos, seq)
        assert pos == mp.n_tokens  # no M-RoPE: one position per token
        sampler = ll.llama_sampler_init_greedy()
        tok = ll.llama_sampler_sample(sampler, model.ctx, -1)
        ll.llama_sampler_free(sampler)
        assert 0 <= tok < model.n_vocab
    finally:
        mp.free()
        ll.llama_memory_seq_rm(model.memory, seq, -1, -1)


def test_markers_must_pair_with_images(
    projector: VisionProjector, screenshot: DecodedImage
) -> None:
    with pytest.raises(MultimodalTokenizeError, match="2 image markers for 1 images"):
        projector.tokenize(projector.marker * 2, [screenshot], add_special=True)
    # libmtmd's default marker in user text is just text.
    mp = projector.tokenize("<__media__> is text", [], add_special=True)
    assert mp.n_images == 0
    mp.free()


def test_a_projector_of_the_wrong_width_is_refused(model: LoadedModel, tmp_path: Path) -> None:
    wrong = write_tiny_mmproj(tmp_path / "wrong.gguf", n_embd_text=512)
    with pytest.raises(ProjectorLoadError, match="output width"):
        VisionProjector(str(wrong), model, n_threads=1)
    with pytest.raises(ProjectorLoadError, match="not found"):
        VisionProjector(str(tmp_path / "missing.gguf"), model, n_threads=1)
    (tmp_path / "text.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ProjectorLoadError, match="bad magic"):
        VisionProjector(str(tmp_path / "text.gguf"), model, n_threads=1)


def test_tokenize_after_free_says_closed(
    model: LoadedModel, tiny_mmproj_path: str, screenshot: DecodedImage
) -> None:
    p = VisionProjector(tiny_mmproj_path, model, n_threads=1)
    p.free()
    p.free()
    with pytest.raises(ProjectorClosed):
        p.tokenize(p.marker, [screenshot], add_special=True)
