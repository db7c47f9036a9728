"""Image decoding: formats, conversions and every way an image can be bad."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from llmi.errors import BadRequest
from llmi_runtime.images import decode_image
from tests.images import b64, data_url, encode, picture

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 4_000_000}


def decode(data: str, **limits: int) -> Image.Image:
    return decode_image(data, param="images.0", **{**LIMITS, **limits})


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_formats_decode_to_rgb(fmt: str) -> None:
    image = decode(b64(picture(1, size=(20, 10)), fmt))
    assert image.mode == "RGB"
    assert image.size == (20, 10)


def test_data_url_and_plain_base64_are_the_same_image() -> None:
    img = picture(2)
    assert decode(data_url(img)).tobytes() == decode(b64(img)).tobytes()


def test_base64_with_line_breaks_and_missing_padding() -> None:
    raw = b64(picture(3))
    wrapped = "\n".join(raw[i : i + 76] for i in range(0, len(raw), 76)).rstrip("=")
    assert decode(wrapped).size == picture(3).size


def test_urlsafe_base64() -> None:
    raw = base64.urlsafe_b64encode(encode(picture(4))).decode()
    assert decode(raw).size == picture(4).size


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode(b64(rgba)).getpixel((0, 0)) == (255, 255, 255)


def test_palette_and_grayscale_convert() -> None:
    assert decode(b64(picture(5).convert("P"))).mode == "RGB"
    assert (
        decode(b64(picture(5).convert("L"))).getpixel((0, 0))[0]
        == decode(b64(picture(5).convert("L"))).getpixel((0, 0))[1]
    )


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    r, _, b = decode(base64.b64encode(buf.getvalue()).decode()).getpixel((0, 0))
    assert r > 200
    assert b < 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("@@@", "not valid base64"),
        (base64.b64encode(b"plain text").decode(), "not an image"),
        (base64.b64encode(encode(picture(1))[:50]).decode(), "could not be decoded"),
        ("http://example.com/a.png", "not fetched"),
        ("file:///etc/passwd", "not fetched"),
        ("data:text/plain;base64,aGk=", "not an image"),
        ("data:image/png,abc", "data:image"),
        ("data:image/png;base64,", "empty"),
        (base64.b64encode(encode(picture(1), "TIFF")).decode(), "not an image"),
    ],
)
def test_bad_images_are_400(data: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        decode(data)
    assert info.value.param == "images.0"
    assert info.value.status == 400


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = b64(Image.new("L", (3000, 3000)))  # 9 MP, over a 4 MP limit, a few kB as PNG
    assert len(bomb) < 100_000
    with pytest.raises(BadRequest, match="over the limit") as info:
        decode(bomb)
    assert info.value.code == "image_too_large"


def test_image_byte_limit() -> None:
    with pytest.raises(BadRequest, match="larger than the limit"):
        decode(b64(picture(1, size=(200, 200)), "BMP"), max_bytes=1000)
