"""Decoding untrusted images: base64 or data URLs, a fixed set of formats, bounded size.

Every failure is a 400 that names the image; pixel limits are checked from the header,
before any pixel is decoded, so decompression bombs cost nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from llmi.errors import BadRequest, LimitExceeded

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,", re.IGNORECASE)
_WS = re.compile(r"\s+")


def decode_image(data: str, *, param: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """An RGB image from base64 text or a data URL; BadRequest on anything else."""
    if data.startswith(("http://", "https://", "file:")):
        raise BadRequest("Images must be base64 strings or data URLs; URLs and paths are not fetched.", param=param)
    match = _DATA_URL.match(data)
    if data.startswith("data:") and not match:
        raise BadRequest("Data URL must be of the form data:image/<type>;base64,<data>.", param=param)
    if match and match.group("mime") and not match.group("mime").lower().startswith("image/"):
        raise BadRequest(f"Data URL media type {match.group('mime')!r} is not an image.", param=param)
    payload = data[match.end() :] if match else data
    if len(payload) > (max_bytes * 4) // 3 + 8:
        raise LimitExceeded(f"Image is larger than the limit of {max_bytes} bytes (LLM_MAX_IMAGE_BYTES).", param=param)
    raw = _b64decode(payload, param)
    if not raw:
        raise BadRequest("Image is empty.", param=param)
    if len(raw) > max_bytes:
        raise LimitExceeded(f"Image is larger than the limit of {max_bytes} bytes (LLM_MAX_IMAGE_BYTES).", param=param)
    return _open(raw, param=param, max_pixels=max_pixels)


def _b64decode(payload: str, param: str) -> bytes:
    payload = _WS.sub("", payload)
    try:
        if "-" in payload or "_" in payload:
            return base64.urlsafe_b64decode(_pad(payload))
        return base64.b64decode(_pad(payload), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Image is not valid base64.", param=param) from None


def _pad(payload: str) -> str:
    return payload + "=" * (-len(payload) % 4)


def _open(raw: bytes, *, param: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=FORMATS)
            width, height = image.size
            if width <= 0 or height <= 0:
                raise BadRequest("Image has no pixels.", param=param)
            if width * height > max_pixels:
                raise BadRequest(
                    f"Image is {width}x{height} pixels, over the limit of {max_pixels} (LLM_MAX_IMAGE_PIXELS).",
                    param=param,
                    code="image_too_large",
                )
            image.seek(0)  # animated GIF/WebP: the first frame
            image.load()
            return _to_rgb(image)
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest("Image is too large to decode safely.", param=param, code="image_too_large") from None
    except UnidentifiedImageError:
        raise BadRequest(f"Data is not an image in a supported format ({', '.join(FORMATS)}).", param=param) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise BadRequest(f"Image could not be decoded: {exc}", param=param) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, not black, as people expect from a flattened image."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
