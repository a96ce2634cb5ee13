"""Image inputs of a chat request: where they are, what they hold, and whether to read them.

Pure functions over the parsed request; no network and no libmtmd. A data URI is decoded with
strict base64, its header read (format and size) before any pixel is decoded, so a small file
that claims 40000x40000 pixels is refused without allocating them, and only then decoded to RGB.
Every refusal is a 400 in the OpenAI envelope that says what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgecloud.api.openai import ChatMessage, ContentPart
from edgecloud.node.errors import ImageLimitExceeded, InvalidImage, RemoteImageRefused

__all__ = [
    "DecodedImage",
    "ImageLimitExceeded",
    "ImageLimits",
    "ImageRef",
    "InvalidImage",
    "RemoteImagePolicy",
    "RemoteImageRefused",
    "check_total_bytes",
    "data_uri_bytes",
    "decode_image",
    "image_parts",
    "image_refs",
    "is_remote",
    "refuse_remote",
    "remote_host",
]

# Pillow's format names for the types a data URI may declare.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_DECLARED = {"image/png", "image/jpeg", "image/jpg", "image/webp"}
_DATA_URI = re.compile(r"data:([A-Za-z0-9.+/-]{1,64})((?:;[^;,]{1,64}){0,4}),", re.ASCII)


@dataclass(frozen=True)
class ImageLimits:
    """What one request may send; each refusal is a 400 naming the limit."""

    max_images: int = 8
    max_image_bytes: int = 8 * 1024 * 1024
    max_request_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 4096 * 4096


@dataclass(frozen=True)
class ImageRef:
    """One image part of a request, in the order it stands in the messages."""

    where: str  # "messages[2].content[1]"
    param: str  # "messages.2.content.1.image_url"
    url: str


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded to 8-bit RGB, row by row (what libmtmd's bitmap takes)."""

    width: int
    height: int
    rgb: bytes
    format: str
    n_bytes: int  # size of the encoded file


def image_parts(messages: list[ChatMessage]) -> list[tuple[int, int, ContentPart]]:
    """(message index, part index, part) of every image part, in order."""
    found = []
    for i, msg in enumerate(messages):
        if isinstance(msg.content, list):
            for j, part in enumerate(msg.content):
                if part.type in ("image_url", "input_image"):
                    found.append((i, j, part))
    return found


def image_refs(messages: list[ChatMessage], limits: ImageLimits) -> list[ImageRef]:
    """The image URLs of a request, checked for shape and count (no decoding yet)."""
    parts = image_parts(messages)
    if len(parts) > limits.max_images:
        raise ImageLimitExceeded(
            f"The request holds {len(parts)} images; this node reads at most "
            f"{limits.max_images} per request.",
            param="messages",
            code="too_many_images",
        )
    refs = []
    for i, j, part in parts:
        where = f"messages[{i}].content[{j}]"
        param = f"messages.{i}.content.{j}.image_url"
        image = part.image_url
        url = image if isinstance(image, str) or image is None else image.url
        if not isinstance(url, str) or not url.strip():
            raise InvalidImage(f"{where}.image_url.url is empty; send a data URI.", param=param)
        refs.append(ImageRef(where, param, url.strip()))
    return refs


def is_remote(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def data_uri_bytes(ref: ImageRef, limits: ImageLimits) -> bytes:
    """The file bytes of a `data:image/...;base64,` URI (strict base64, size-limited)."""
    m = _DATA_URI.match(ref.url)
    if m is None:
        scheme = ref.url.split(":", 1)[0][:16] if ":" in ref.url else ""
        what = f"a '{scheme}:' URL" if scheme else "not a URL"
        raise InvalidImage(
            f"{ref.where}.image_url.url is {what}; send the image as a data URI "
            "(data:image/png;base64,...).",
            param=ref.param,
        )
    mime = m.group(1).lower()
    params = [p.strip().lower() for p in m.group(2).split(";") if p.strip()]
    if mime not in _DECLARED:
        raise InvalidImage(
            f"{ref.where} is a '{mime}' data URI; this node reads PNG, JPEG and WebP images.",
            param=ref.param,
            code="unsupported_image_type",
        )
    if "base64" not in params:
        raise InvalidImage(
            f"{ref.where}.image_url.url must be base64 (data:{mime};base64,...).",
            param=ref.param,
        )
    payload = ref.url[m.end() :]
    # Base64 grows data by 4/3: refuse an oversized image before decoding it.
    if len(payload) // 4 * 3 > limits.max_image_bytes + 3:
        raise _too_big(ref, len(payload) // 4 * 3, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(
            f"{ref.where}.image_url.url holds broken base64 data.", param=ref.param
        ) from None
    if not data:
        raise InvalidImage(f"{ref.where}.image_url.url holds no image data.", param=ref.param)
    if len(data) > limits.max_image_bytes:
        raise _too_big(ref, len(data), limits)
    return data


def _too_big(ref: ImageRef, n: int, limits: ImageLimits) -> ImageLimitExceeded:
    return ImageLimitExceeded(
        f"{ref.where} is {n} bytes; this node reads images of at most "
        f"{limits.max_image_bytes} bytes.",
        param=ref.param,
    )


def check_total_bytes(sizes: list[int], limits: ImageLimits) -> None:
    total = sum(sizes)
    if total > limits.max_request_bytes:
        raise ImageLimitExceeded(
            f"The request's images hold {total} bytes together; this node reads at most "
            f"{limits.max_request_bytes} image bytes per request.",
            param="messages",
        )


def decode_image(ref: ImageRef, data: bytes, limits: ImageLimits) -> DecodedImage:
    """Check the header (format, pixel count), then decode to RGB; refusals are 400s."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        # Our own pixel limit is checked on the header below; Pillow's is a second guard.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
        except Image.DecompressionBombError:
            raise ImageLimitExceeded(
                f"{ref.where} declares far more pixels than this node reads "
                f"(at most {limits.max_pixels}); refused before decoding.",
                param=ref.param,
                code="image_too_many_pixels",
            ) from None
        except UnidentifiedImageError:
            raise InvalidImage(
                f"{ref.where} is not a PNG, JPEG or WebP image.", param=ref.param
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidImage(f"{ref.where} is a broken image: {exc}.", param=ref.param) from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise InvalidImage(f"{ref.where} has no pixels.", param=ref.param)
            if width * height > limits.max_pixels:
                raise ImageLimitExceeded(
                    f"{ref.where} is {width}x{height} pixels; this node reads images of at most "
                    f"{limits.max_pixels} pixels. Scale it down and send it again.",
                    param=ref.param,
                    code="image_too_many_pixels",
                )
            fmt = img.format or "?"
            try:
                img.load()
                rgb = img if img.mode == "RGB" else img.convert("RGB")
                raw = rgb.tobytes()
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                raise InvalidImage(
                    f"{ref.where} could not be decoded ({_reason(exc)}); send a complete "
                    "PNG, JPEG or WebP file.",
                    param=ref.param,
                ) from None
    return DecodedImage(width, height, raw, fmt, len(data))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return text[:200] if text else type(exc).__name__


@dataclass(frozen=True)
class RemoteImagePolicy:
    """Which remote hosts the node may fetch images from (none by default: SSRF)."""

    hosts: frozenset[str] = frozenset()
    max_bytes: int = 8 * 1024 * 1024
    timeout_s: float = 5.0

    def allows(self, url: str) -> bool:
        return remote_host(url) in self.hosts if self.hosts else False


def remote_host(url: str) -> str | None:
    """The lower-case host of an http(s) URL without credentials, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return parts.hostname.lower()


def refuse_remote(ref: ImageRef, policy: RemoteImagePolicy) -> None:
    """400 unless the URL's host is on the node's allow-list."""
    if policy.allows(ref.url):
        return
    if not policy.hosts:
        raise RemoteImageRefused(
            f"{ref.where}.image_url.url is a remote URL; this node does not fetch images from "
            "the network. Send the image inline as a data URI (data:image/png;base64,...).",
            param=ref.param,
        )
    raise RemoteImageRefused(
        f"{ref.where}.image_url.url is on a host this node does not fetch from; allowed hosts: "
        f"{', '.join(sorted(policy.hosts))}. Or send the image as a data URI.",
        param=ref.param,
    )
