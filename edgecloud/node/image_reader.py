"""A chat request with images, made ready for the engine: read, checked, decoded, tokenised.

The checks are the pure ones of image_checks.py; this module adds the I/O around them:
fetching an allowed remote URL, and decoding and tokenising on worker threads (never on the
event loop), at most `DECODE_AT_ONCE` requests at a time so a burst of screenshots cannot hold
many decoded bitmaps in memory together.
"""

from __future__ import annotations

import asyncio
from typing import Any

from edgecloud.api.errors import BadRequest
from edgecloud.api.openai import ChatMessage
from edgecloud.node.config import NodeConfig
from edgecloud.node.errors import ModelSwapped
from edgecloud.node.image_checks import (
    DecodedImage,
    ImageLimits,
    ImageRef,
    check_total_bytes,
    data_uri_bytes,
    decode_image,
    image_parts,
    image_refs,
    is_remote,
    refuse_remote,
)
from edgecloud.node.image_fetch import fetch_image
from edgecloud.node.image_projector import (
    MultimodalPrompt,
    MultimodalTokenizeError,
    ProjectorClosed,
    VisionProjector,
)
from edgecloud.node.prompt import ChatTemplate

DECODE_AT_ONCE = 2


def has_images(messages: list[ChatMessage]) -> bool:
    return bool(image_parts(messages))


class ImagePromptReader:
    """Turns chat messages with image parts into a `MultimodalPrompt` for one projector."""

    def __init__(self, config: NodeConfig) -> None:
        self.limits = config.image_limits()
        self.remote = config.remote_images()
        self._decoding = asyncio.Semaphore(DECODE_AT_ONCE)

    async def read(
        self,
        messages: list[ChatMessage],
        template: ChatTemplate,
        projector: VisionProjector,
        n_batch: int,
        tools: list[dict[str, Any]] | None = None,
    ) -> tuple[str, MultimodalPrompt]:
        """The rendered prompt text and its tokens and image chunks; 4xx on a bad image."""
        refs = image_refs(messages, self.limits)
        fetched: dict[int, bytes] = {}
        for i, ref in enumerate(refs):
            if is_remote(ref.url):
                refuse_remote(ref, self.remote)
                fetched[i] = await fetch_image(ref, self.remote)
        text = template.render(messages, tools, projector.marker)
        async with self._decoding:
            images = await asyncio.to_thread(_decode_all, refs, fetched, self.limits)
            try:
                prompt = await asyncio.to_thread(projector.tokenize, text, images, add_special=True)
            except ProjectorClosed:
                raise ModelSwapped(
                    "The model was swapped while reading the images; retry."
                ) from None
            except MultimodalTokenizeError as exc:
                raise BadRequest(f"The images could not be placed in the prompt: {exc}.") from None
        if projector.non_causal:
            # Such images are decoded in one batch (their tokens attend to each other).
            big = max((item.n_tokens for item in prompt.items), default=0)
            if big > n_batch:
                prompt.free()
                raise BadRequest(
                    f"An image takes {big} tokens, more than this node's batch of {n_batch}; "
                    "start it with a larger --batch.",
                    param="messages",
                )
        return text, prompt


def _decode_all(
    refs: list[ImageRef], fetched: dict[int, bytes], limits: ImageLimits
) -> list[DecodedImage]:
    """Base64 first (every size is known before any pixel is decoded), then the pixels."""
    files = [
        fetched[i] if i in fetched else data_uri_bytes(ref, limits) for i, ref in enumerate(refs)
    ]
    check_total_bytes([len(f) for f in files], limits)
    return [decode_image(ref, data, limits) for ref, data in zip(refs, files, strict=True)]
