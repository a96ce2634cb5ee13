"""The one seam to libmtmd (llama.cpp's multimodal library): a projector beside a loaded model.

`VisionProjector` loads an mmproj GGUF for a `LoadedModel`, turns a rendered chat prompt with
media markers plus decoded images into runs of text tokens and image chunks
(`MultimodalPrompt`), encodes one image chunk, and decodes its embeddings into one sequence of
the model's context. Tokenising is safe from any thread; encode and decode belong to the engine
thread, like every other use of the llama.cpp context.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as ll

from edgecloud.node.backend import MEDIA_TOKEN
from edgecloud.node.image_checks import DecodedImage
from edgecloud.node.model import LoadedModel, ModelLoadError
from edgecloud.node.model import _drop_log as quiet_log_callback  # one log sink for llama.cpp


class ProjectorLoadError(ModelLoadError):
    """The projector file could not be loaded for this model."""


class ProjectorClosed(Exception):
    """The projector was freed (its model was swapped out) while a request was being prepared."""


class MultimodalTokenizeError(Exception):
    """libmtmd refused the prompt (for example markers and images that do not pair up)."""


def _mtmd() -> Any:
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


@dataclass(eq=False)
class ImageChunk:
    """One image of a prompt as libmtmd chunked it: `n_tokens` embeddings over `n_pos` positions.

    The handle is borrowed from its `MultimodalPrompt` and lives as long as that prompt.
    """

    handle: int
    n_tokens: int
    n_pos: int


Segment = list[int] | ImageChunk


@dataclass(eq=False)
class MultimodalPrompt:
    """A prompt as text-token runs and image chunks, in order. Call `free()` when done."""

    segments: list[Segment]
    n_tokens: int  # text tokens + image tokens: what the KV cache holds and usage counts
    n_image_tokens: int
    n_images: int
    _chunks: int | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def items(self) -> list[ImageChunk]:
        """The images, in prompt order (the engine's `PromptMedia`)."""
        return [s for s in self.segments if isinstance(s, ImageChunk)]

    def flat_tokens(self) -> list[int]:
        """The prompt as one token list, each image as `n_tokens` MEDIA_TOKEN entries."""
        out: list[int] = []
        for seg in self.segments:
            if isinstance(seg, ImageChunk):
                out.extend([MEDIA_TOKEN] * seg.n_tokens)
            else:
                out.extend(seg)
        return out

    @property
    def text_prefix(self) -> list[int]:
        """The tokens before the first image (what a slot's cache may share with this prompt)."""
        first = self.segments[0] if self.segments else None
        return list(first) if isinstance(first, list) else []

    def free(self) -> None:
        with self._lock:
            chunks, self._chunks = self._chunks, None
        if chunks:
            _mtmd().mtmd_input_chunks_free(chunks)

    def __del__(self) -> None:  # a backstop: the engine frees prompts explicitly
        try:
            self.free()
        except Exception:  # noqa: BLE001 - at interpreter exit the library may be gone
            pass


@dataclass(eq=False)
class ImageEmbedding:
    """The encoder's output for one image chunk, copied out of libmtmd's buffer."""

    data: Any  # ctypes float array, n_tokens * n_embd
    n_tokens: int


class VisionProjector:
    """An mmproj GGUF loaded by libmtmd for one LoadedModel (freed with it, before it)."""

    def __init__(self, path: str, model: LoadedModel, n_threads: int) -> None:
        if not os.path.isfile(path):
            raise ProjectorLoadError(f"projector file not found: {path}")
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ProjectorLoadError(f"not a GGUF file (bad magic): {path}")
        mtmd = _mtmd()
        _quiet_mtmd_logs(mtmd)
        self.path = os.path.abspath(path)
        self.model = model
        # A marker no client can guess: text that happens to contain libmtmd's default
        # "<__media__>" must stay text, not claim an image slot.
        self.marker = f"<__edgecloud_media_{secrets.token_hex(8)}__>"
        self._marker_bytes = self.marker.encode()
        params = mtmd.mtmd_context_params_default()
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = True
        params.media_marker = self._marker_bytes
        ctx = mtmd.mtmd_init_from_file(self.path.encode(), model.model, params)
        if not ctx:
            raise ProjectorLoadError(
                f"libmtmd could not load the projector {path} for {model.info.path}: it is not a "
                "projector GGUF, or its output width does not match the model's "
                "(EDGECLOUD_LLAMA_LOG=1 shows llama.cpp's reason)"
            )
        self._ctx: int | None = ctx
        if not mtmd.mtmd_support_vision(ctx):
            self.free()
            raise ProjectorLoadError(f"the projector {path} has no vision encoder")
        self.non_causal = bool(mtmd.mtmd_decode_use_non_causal(ctx, None))
        self.mrope = bool(mtmd.mtmd_decode_use_mrope(ctx))
        self.n_embd = int(ll.llama_model_n_embd_inp(model.model))
        self.size_bytes = os.path.getsize(self.path)
        # Tokenising runs on request threads and reads the context; freeing must wait for it.
        self._users = threading.Condition()
        self._n_users = 0

    # -- any thread --------------------------------------------------------------------------
    def tokenize(
        self, prompt: str, images: Sequence[DecodedImage], *, add_special: bool
    ) -> MultimodalPrompt:
        """Split `prompt` at its markers into text runs and one image chunk per image."""
        if prompt.count(self.marker) != len(images):
            raise MultimodalTokenizeError(
                f"the prompt holds {prompt.count(self.marker)} image markers for "
                f"{len(images)} images"
            )
        mtmd = _mtmd()
        with self._users:
            ctx = self._ctx
            if ctx is None:
                raise ProjectorClosed("the projector was unloaded")
            self._n_users += 1
        bitmaps: list[int] = []
        chunks = None
        try:
            for img in images:
                data = ctypes.cast(ctypes.c_char_p(img.rgb), ctypes.POINTER(ctypes.c_uint8))
                bitmap = mtmd.mtmd_bitmap_init(img.width, img.height, data)
                if not bitmap:
                    raise MultimodalTokenizeError("libmtmd could not take the image")
                bitmaps.append(bitmap)
            text = prompt.encode("utf-8")
            inp = mtmd.mtmd_input_text()
            inp.text = text
            inp.text_len = len(text)
            inp.add_special = add_special
            inp.parse_special = True
            chunks = mtmd.mtmd_input_chunks_init()
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), array, len(bitmaps))
            if rc != 0:
                raise MultimodalTokenizeError(f"libmtmd could not tokenize the prompt ({rc})")
            out = self._segments(chunks)
            chunks = None  # owned by `out` now
            return out
        finally:
            if chunks:
                mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
            with self._users:
                self._n_users -= 1
                self._users.notify_all()

    def _segments(self, chunks: int) -> MultimodalPrompt:
        mtmd = _mtmd()
        segments: list[Segment] = []
        n_tokens = n_image = n_images = 0
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                tokens = list(ptr[: count.value]) if count.value else []
                if not tokens:
                    continue
                if segments and isinstance(segments[-1], list):
                    segments[-1].extend(tokens)
                else:
                    segments.append(tokens)
                n_tokens += len(tokens)
            elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                pos = int(mtmd.mtmd_input_chunk_get_n_pos(chunk))
                segments.append(ImageChunk(chunk, n, pos))
                n_tokens += n
                n_image += n
                n_images += 1
            else:
                mtmd.mtmd_input_chunks_free(chunks)
                raise MultimodalTokenizeError("this node reads images only (not audio)")
        return MultimodalPrompt(segments, n_tokens, n_image, n_images, _chunks=chunks)

    # -- engine thread -----------------------------------------------------------------------
    def encode(self, image: ImageChunk) -> ImageEmbedding:
        """Run the vision tower on one image chunk; the result is a copy the caller owns."""
        mtmd = _mtmd()
        rc = mtmd.mtmd_encode_chunk(self._ctx, image.handle)
        if rc != 0:
            raise RuntimeError(f"image encode failed ({rc})")
        out = mtmd.mtmd_get_output_embd(self._ctx)
        count = image.n_tokens * self.n_embd
        buf = (ctypes.c_float * count)()
        ctypes.memmove(buf, out, count * ctypes.sizeof(ctypes.c_float))
        return ImageEmbedding(buf, image.n_tokens)

    def decode(
        self, image: ImageChunk, embd: ImageEmbedding, n_past: int, seq: int, n_batch: int
    ) -> int:
        """Decode an encoded image into sequence `seq` at position `n_past`; the next position.

        This is its own llama_decode call (an embedding batch cannot hold tokens); models
        whose images attend both ways (Gemma 3) decode each image in one non-causal batch.
        """
        mtmd = _mtmd()
        new_pos = ll.llama_pos(n_past)
        rc = mtmd.mtmd_helper_decode_image_chunk(
            self._ctx,
            self.model.ctx,
            image.handle,
            embd.data,
            n_past,
            seq,
            n_batch,
            ctypes.byref(new_pos),
            mtmd.mtmd_helper_post_decode_callback(),
            None,
        )
        if rc != 0:
            raise RuntimeError(f"image decode failed ({rc})")
        return int(new_pos.value)

    def evaluate(self, item: object, seq: int, pos: int, n_batch: int) -> int:
        """Encode one image chunk and decode it into `seq` at `pos`; the next position."""
        if not isinstance(item, ImageChunk):
            raise TypeError(f"not an image chunk: {type(item).__name__}")
        return self.decode(item, self.encode(item), pos, seq, n_batch)

    def free(self) -> None:
        """Free the libmtmd context once no request thread is tokenising with it."""
        with self._users:
            ctx, self._ctx = self._ctx, None
            while self._n_users:
                self._users.wait()
        if ctx:
            _mtmd().mtmd_free(ctx)


_mtmd_logs_quiet = False


def _quiet_mtmd_logs(mtmd: Any) -> None:
    global _mtmd_logs_quiet
    if _mtmd_logs_quiet or os.environ.get("EDGECLOUD_LLAMA_LOG") == "1":
        return
    mtmd.mtmd_log_set(quiet_log_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(quiet_log_callback, ctypes.c_void_p(0))
    _mtmd_logs_quiet = True


def load_projector(model: LoadedModel, path: str, n_threads: int) -> VisionProjector:
    """Load a vision projector (mmproj GGUF) for `model`; the model frees it with itself."""
    projector = VisionProjector(path, model, n_threads)
    model.projector = projector
    return projector
