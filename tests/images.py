"""Deterministic test images in every accepted format, as base64 and data URLs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def picture(seed: int = 0, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    pixels = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype("uint8")
    return Image.fromarray(pixels, "RGB").convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    return base64.b64encode(encode(image, fmt)).decode()


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64,{b64(image, fmt)}"
