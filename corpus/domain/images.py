"""Recognising images by their content, with a hard cap on decoded size.

A file called ``cat.jpg`` may be a PDF, a truncated download or a 50,000 × 50,000 pixel
decompression bomb. Ingest decides by decoding: the format comes from the bytes, the pixel count
is checked against the cap *before* any pixel is decoded, and the whole image is then decoded so
truncation and corruption surface here rather than in a training job months later.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

from PIL import Image, UnidentifiedImageError

from corpus.domain.errors import ImageError
from corpus.domain.facts import displayed_size, draft_request, facts_of, orientation
from corpus.domain.imagefacts import ImageFacts
from corpus.domain.limits import DEFAULT_MAX_PIXELS
from corpus.domain.media import CONTENT_TYPES

OPEN_FORMATS = [f for f in CONTENT_TYPES if f != "MPO"]
"""Decoders to try; the JPEG decoder itself returns MPO images where it finds them."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the decode found: format, size **as displayed** (EXIF orientation applied), mode, and
    the content's facts (:mod:`corpus.domain.facts`) when they were asked for."""

    format: str
    width: int
    height: int
    mode: str
    facts: ImageFacts | None = None

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def open_capped(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``data`` lazily, refusing unknown formats and images above ``max_pixels``.

    Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) is process-global and only warns below twice
    the limit, so the check is made here explicitly, per call, from the header alone.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a recognised image (accepted: " + ", ".join(sorted(CONTENT_TYPES)) + ")") from exc
    except Exception as exc:  # Pillow raises assorted errors on malformed headers
        raise ImageError(f"unreadable image header: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels, above the cap of {max_pixels}"
            " (decompression-bomb guard, CORPUS_MAX_PIXELS)"
        )
    return img


def decoded_bytes(img: Image.Image) -> int:
    """What decoding ``img`` will allocate, from its header alone: Pillow keeps ``1``, ``L`` and
    ``P`` images at one byte a pixel, 16-bit greyscale at two, and everything else (RGB included,
    padded) at four."""
    width, height = img.size
    per_pixel = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4
    return width * height * per_pixel


def inspect(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    admit: Callable[[int], AbstractContextManager[None]] | None = None,
    facts: bool = True,
) -> ImageInfo:
    """Identify and fully decode ``data``; raise :class:`ImageError` with a readable reason.

    ``admit(n)`` (see :mod:`corpus.app.admission`) is entered with the bytes the decode will
    allocate, declared by the header, before a single pixel is decoded, and held until it is done.
    With ``facts`` the same decode yields the content's :class:`~corpus.domain.facts.ImageFacts`
    (SHA-256, perceptual hashes, quality metrics): no second decode.
    """
    if not data:
        raise ImageError("empty file")
    img = open_capped(data, max_pixels)
    stored = img.size
    width, height = displayed_size(stored, orientation(img))
    info = ImageInfo(format=img.format or "", width=width, height=height, mode=img.mode)
    try:
        if img.format in ("JPEG", "MPO"):
            # Decoding at 1/8 scale still walks the whole entropy-coded stream, so truncation and
            # corruption are caught, at a fraction of the cost of a full-size decode (small images
            # are decoded at a larger scale, enough pixels for the facts: draft_request).
            img.draft(img.mode, draft_request(stored) if facts else (max(1, stored[0] // 8), max(1, stored[1] // 8)))
        with admit(decoded_bytes(img)) if admit else nullcontext():
            img.load()
            found = facts_of(img, data, stored) if facts else None
    except Exception as exc:
        raise ImageError(f"corrupt or truncated {info.format} image: {exc}") from exc
    finally:
        img.close()
    return replace(info, facts=found)
