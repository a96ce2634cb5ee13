"""Image inputs: every bad image is a clear 400 before anything heavy runs (pure functions)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgecloud.api.errors import BadRequest
from edgecloud.api.openai import ChatMessage
from edgecloud.node.image_checks import (
    DecodedImage,
    ImageLimitExceeded,
    ImageLimits,
    ImageRef,
    InvalidImage,
    RemoteImagePolicy,
    RemoteImageRefused,
    data_uri_bytes,
    decode_image,
    image_refs,
    refuse_remote,
    remote_host,
)

LIMITS = ImageLimits()


def encoded(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 90) if mode == "RGB" else 128).save(buf, format=fmt)
    return buf.getvalue()


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def ref(url: str) -> ImageRef:
    return ImageRef("messages[0].content[1]", "messages.0.content.1.image_url", url)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width * 3 + 1) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def load(url: str, limits: ImageLimits = LIMITS) -> DecodedImage:
    r = ref(url)
    return decode_image(r, data_uri_bytes(r, limits), limits)


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_png_jpeg_webp_decode_to_rgb(fmt: str, mime: str) -> None:
    img = load(uri(encoded(fmt), mime))
    assert (img.width, img.height, img.format) == (64, 48, fmt)
    assert len(img.rgb) == 64 * 48 * 3


def test_grey_and_alpha_images_become_rgb() -> None:
    img = load(uri(encoded("PNG", mode="L")))
    assert len(img.rgb) == 64 * 48 * 3
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(buf, format="PNG")
    assert len(load(uri(buf.getvalue())).rgb) == 8 * 8 * 3


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png;base64,iVBORw0KGgo$$$$", "broken base64"),
        ("data:image/png;base64,iVBORw0KGgo", "broken base64"),  # bad padding
        ("data:image/png;base64,", "no image data"),
        ("data:image/png,rawbytes", "must be base64"),
        ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", "png, jpeg and webp"),
        ("data:text/plain;base64,aGVsbG8=", "png, jpeg and webp"),
        ("file:///etc/passwd", "'file:' url"),
        ("just some text", "not a url"),
    ],
)
def test_bad_data_uris_are_400(url: str, words: str) -> None:
    with pytest.raises(BadRequest) as exc:
        load(url)
    assert exc.value.status == 400
    assert words in exc.value.message.lower()
    assert exc.value.param == "messages.0.content.1.image_url"


def test_bytes_that_are_no_image_are_400() -> None:
    with pytest.raises(InvalidImage, match="not a PNG, JPEG or WebP"):
        load(uri(b"hello, I am not a picture at all" * 10))


def test_a_gif_declared_as_png_is_refused() -> None:
    with pytest.raises(InvalidImage, match="not a PNG, JPEG or WebP"):
        load(uri(encoded("GIF")))


def test_truncated_png_is_400() -> None:
    whole = encoded("PNG", (300, 300))
    with pytest.raises(InvalidImage, match="could not be decoded"):
        load(uri(whole[: len(whole) // 2]))


def test_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = png_claiming(40000, 40000)
    assert len(bomb) < 2000
    with pytest.raises(ImageLimitExceeded) as exc:
        load(uri(bomb))
    assert exc.value.code == "image_too_many_pixels"


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageLimitExceeded, match="5000x5000 pixels"):
        load(uri(png_claiming(5000, 5000)))
    small = ImageLimits(max_pixels=100)
    with pytest.raises(ImageLimitExceeded, match="64x48"):
        load(uri(encoded("PNG")), small)


def test_byte_limit_refuses_before_decoding_base64() -> None:
    limits = ImageLimits(max_image_bytes=1000)
    with pytest.raises(ImageLimitExceeded, match="at most 1000 bytes"):
        data_uri_bytes(ref(uri(b"\x00" * 5000)), limits)


def _messages(n_images: int, url: str = "data:image/png;base64,AAAA") -> list[ChatMessage]:
    parts: list[dict[str, object]] = [{"type": "text", "text": "look"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for _ in range(n_images)]
    return [ChatMessage.model_validate({"role": "user", "content": parts})]


def test_image_refs_are_in_order_and_counted() -> None:
    refs = image_refs(_messages(3), LIMITS)
    assert [r.where for r in refs] == [f"messages[0].content[{j}]" for j in (1, 2, 3)]
    with pytest.raises(ImageLimitExceeded) as exc:
        image_refs(_messages(9), LIMITS)
    assert exc.value.code == "too_many_images"


def test_empty_url_is_400() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        image_refs(_messages(1, url="  "), LIMITS)


def test_remote_urls_are_refused_unless_the_host_is_allowed() -> None:
    r = ref("https://example.com/cat.png")
    with pytest.raises(RemoteImageRefused, match="does not fetch images"):
        refuse_remote(r, RemoteImagePolicy())
    allowed = RemoteImagePolicy(hosts=frozenset({"images.example.org"}))
    with pytest.raises(RemoteImageRefused, match="images.example.org"):
        refuse_remote(r, allowed)
    refuse_remote(ref("https://IMAGES.example.org:8443/a.png"), allowed)
    # Credentials in the URL, other schemes and look-alike hosts are not the allowed host.
    for url in (
        "https://user:pw@images.example.org/a.png",
        "ftp://images.example.org/a.png",
        "https://images.example.org.evil.test/a.png",
        "https://evil.test/?images.example.org",
    ):
        with pytest.raises(RemoteImageRefused):
            refuse_remote(ref(url), allowed)
    assert remote_host("http://[::1]:80/x") == "::1"


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_arbitrary_bytes_never_escape_as_anything_but_a_400(data: bytes) -> None:
    try:
        load(uri(data))
    except BadRequest as exc:
        assert exc.status == 400
