"""Generated photo-like pictures and their near-duplicate variants, for the dedupe tests and bench.

Distinct seeds give distinct pictures: a smooth random gradient, a handful of random filled shapes
(ellipses, polygons, bars) softened by a blur, and per-pixel noise, so that, like photographs,
they have both structure at every scale and texture (flat colours would make perceptual hashes
trivially equal or trivially different).
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like RGB picture, a pure function of ``seed`` and ``size``."""
    rnd = random.Random(seed)
    w, h = size
    corners = np.array([[rnd.randrange(256) for _ in range(3)] for _ in range(4)], dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    fx, fy = (xs / max(1, w - 1))[..., None], (ys / max(1, h - 1))[..., None]
    top = corners[0] * (1 - fx) + corners[1] * fx
    bottom = corners[2] * (1 - fx) + corners[3] * fx
    base = Image.fromarray((top * (1 - fy) + bottom * fy).clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(base)
    for _ in range(rnd.randint(4, 9)):
        colour = tuple(rnd.randrange(256) for _ in range(3))
        x0, y0 = rnd.randrange(w), rnd.randrange(h)
        x1, y1 = x0 + rnd.randint(w // 10, w // 2), y0 + rnd.randint(h // 10, h // 2)
        kind = rnd.randrange(3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.polygon([(rnd.randrange(w), rnd.randrange(h)) for _ in range(rnd.randint(3, 6))], fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y0 + rnd.randint(2, max(3, h // 12))), fill=colour)
    soft = base.filter(ImageFilter.GaussianBlur(rnd.uniform(0.6, 1.8)))
    noise = np.random.default_rng(seed).normal(0, rnd.uniform(3, 10), (h, w, 1)).astype(np.float32)
    return Image.fromarray((np.asarray(soft, dtype=np.float32) + noise).clip(0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90, exif: Image.Exif | None = None) -> bytes:
    out = io.BytesIO()
    kwargs: dict[str, object] = {"quality": quality} if fmt == "JPEG" else {}
    if exif is not None:
        kwargs["exif"] = exif
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def jpeg_of(seed: int, size: tuple[int, int] = (320, 240), quality: int = 90) -> bytes:
    return encode(picture(seed, size), "JPEG", quality)


VARIANTS = ("reencode", "half", "png", "brighter", "darker")
"""The near-duplicate variants the dedupe issue names: a JPEG re-encode at quality 50-90, half
size, a PNG conversion, ±10 % brightness."""


def variant(original: bytes, kind: str, seed: int = 0) -> bytes:
    """A near duplicate of ``original`` (JPEG bytes) of the given kind (:data:`VARIANTS`)."""
    img = Image.open(io.BytesIO(original)).convert("RGB")
    if kind == "reencode":
        return encode(img, "JPEG", random.Random(seed).randint(50, 90))
    if kind == "half":
        return encode(img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.LANCZOS), "JPEG", 90)
    if kind == "png":
        return encode(img, "PNG")
    if kind in ("brighter", "darker"):
        return encode(ImageEnhance.Brightness(img).enhance(1.1 if kind == "brighter" else 0.9), "JPEG", 90)
    raise ValueError(f"unknown variant {kind!r}")


def rotated_exif(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A JPEG stored sideways with EXIF Orientation 6 (display turned 90° clockwise): the stored
    pixels are ``size`` turned; as displayed it is ``size[1]`` wide and ``size[0]`` high... i.e. the
    stored file is ``(size[1], size[0])`` and displays as ``size``."""
    upright = picture(seed, size)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes for orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", 90, exif)
