"""What the corpus knows about an image's content, computed once from the decode ingest already makes.

:func:`facts_of` turns a loaded Pillow image (the blob trigger's decode, see
:func:`corpus.domain.images.inspect`) and the file's bytes into :class:`ImageFacts`: content
identity, perceptual hashes, the size as displayed and a few quality metrics. It is pure (no I/O,
no Azure) and cheap: the image is downscaled **once** to a fixed :data:`GREY_SIDE` x GREY_SIDE
array (colour kept only long enough to decide the grey-scale flag), and every hash and metric is
computed from that one small array, so the added cost does not grow with the image's pixel count
beyond that one resize (see docs/benchmarks.md, "Image facts and duplicates").

The facts, their definitions and ranges (the column names are the ``Images`` row's and the
manifest's; docs/dedupe.md is the user's page):

``sha256``
    SHA-256 of the file's bytes, lowercase hex (64 characters): content identity. Two files are
    *exact duplicates* iff their ``sha256`` are equal. (MD5 stays, as Azure's ``Content-MD5``.)
``phash``
    64-bit perceptual hash, 16 lowercase hex digits: :func:`imagehash.phash` (DCT of a 32 x 32
    grey image, low 8 x 8 coefficients above their median) of the displayed, downscaled grey array.
``dhash``
    64-bit difference hash, 16 lowercase hex digits: :func:`imagehash.dhash` (9 x 8 grey image,
    each pixel brighter than its left neighbour) of the same array. Used to *confirm* pHash matches.
``width``, ``height``
    Pixels **as displayed**: the EXIF ``Orientation`` tag (values 5-8 turn the picture a quarter)
    is applied, so a portrait photo stored sideways by a camera is recorded upright.
``sharpness``
    Variance of the 4-neighbour Laplacian (kernel ``[[0,1,0],[1,-4,1],[0,1,0]]``, as OpenCV's
    ``Laplacian(ksize=1)``) over the interior of the GREY_SIDE x GREY_SIDE grey array, grey levels
    0-255. Range 0 (flat) upwards, unbounded in principle (at most 1,040,400 for a checkerboard);
    photographs are typically 100-3,000; below ~100 is usually blurred or nearly flat.
    Because the array has a fixed size, the figure is comparable across image sizes.
``brightness``
    Mean grey level / 255, in [0, 1].
``contrast``
    RMS contrast: standard deviation of the grey levels / 255, in [0, 0.5].
``entropy``
    Shannon entropy of the 256-bin grey histogram, bits, in [0, 8] (0 = one flat colour).
``grey``
    True when the picture carries no colour: a grey-scale mode (``1``, ``L``, ``LA``, ``I``,
    ``F``, ``I;16``…), or colour channels that differ by more than :data:`GREY_TOLERANCE` levels
    in at most :data:`GREY_OUTLIERS` of the downscaled pixels (JPEG chroma noise tolerated).
``aspect``
    ``width / height`` as displayed, rounded to 4 decimals; > 1 is landscape.

Metric values are rounded (:data:`DECIMALS`) so that equal pixels give equal, stable text in
tables and manifests.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from corpus.domain.imagefacts import ImageFacts

GREY_SIDE = 256
"""The side of the one grey array every hash and metric is computed from."""
GREY_TOLERANCE = 12
"""Grey levels two colour channels may differ by in a pixel still counted as grey."""
GREY_OUTLIERS = 0.01
"""The share of downscaled pixels allowed beyond :data:`GREY_TOLERANCE` in a grey picture."""
DECIMALS = 4

ORIENTATION_TAG = 0x0112
"""EXIF Orientation. 1 = upright; 2-4 mirror or turn half; 5-8 turn a quarter (swap width and height)."""

_TRANSPOSE: dict[int, tuple[Image.Transpose, ...]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
"""What Pillow's ``ImageOps.exif_transpose`` does for each orientation, applied to the small array only."""

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_RESIZABLE = frozenset({"RGB", "RGBA", "RGBX", "L", "LA"})


def orientation(img: Image.Image) -> int:
    """The EXIF orientation of ``img`` (1 when absent or nonsense)."""
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is no reason to refuse the picture
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(stored: tuple[int, int], orient: int) -> tuple[int, int]:
    """(width, height) as displayed: swapped for the quarter turns (orientation 5-8)."""
    w, h = stored
    return (h, w) if orient >= 5 else (w, h)


def draft_request(size: tuple[int, int]) -> tuple[int, int]:
    """The size to ask a JPEG ``draft`` decode for: at most 1/8 scale (what ingest always decoded
    at), but never below :data:`GREY_SIDE` on a side the image has, so the facts see enough pixels."""
    w, h = size
    return max(w // 8, min(w, GREY_SIDE), 1), max(h // 8, min(h, GREY_SIDE), 1)


def small_rgb(img: Image.Image) -> Image.Image:
    """``img`` (decoded, any mode, any size) as a GREY_SIDE x GREY_SIDE ``RGB`` or ``L`` image.

    Resizing before converting keeps the conversion on 65,536 pixels rather than millions; modes
    Pillow cannot resample smoothly (palettes, 16-bit, CMYK…) are converted first.
    """
    frame = img
    if frame.mode not in _RESIZABLE:
        frame = frame.convert("L" if frame.mode in _GREY_MODES else "RGB")
    small = frame.resize((GREY_SIDE, GREY_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if small.mode in ("RGBA", "RGBX"):
        small = small.convert("RGB")
    elif small.mode == "LA":
        small = small.convert("L")
    return small


def is_grey(mode: str, small: Image.Image) -> bool:
    """See :data:`GREY_TOLERANCE`: a grey mode, or colour channels that (nearly) agree everywhere."""
    if mode in _GREY_MODES or small.mode == "L":
        return True
    return bool(int(np.count_nonzero(channel_spread(small) > GREY_TOLERANCE)) <= GREY_OUTLIERS * small.size[0] * small.size[1])


def channel_spread(small: Image.Image) -> np.ndarray[Any, Any]:
    """Per pixel of an ``RGB`` image, its largest channel minus its smallest (``uint8``, 0-255).

    Element-wise over the three channel planes rather than ``max(axis=2) - min(axis=2)``: numpy's
    reductions along a 3-long last axis cost ~2 ms on GREY_SIDE² pixels, this ~0.1 ms, with the
    same values (max >= min, so the ``uint8`` difference never wraps). About 8 % of a thumbnail
    render used to go there (docs/benchmarks.md, "Thumbnails, issue 26 round 3").
    """
    rgb = np.asarray(small)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread: np.ndarray[Any, Any] = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return spread


def laplacian_variance(grey: np.ndarray[Any, Any]) -> float:
    """Variance of the 4-neighbour Laplacian over the interior of ``grey`` (float, 0-255 levels)."""
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def entropy_bits(grey_u8: np.ndarray[Any, Any]) -> float:
    """Shannon entropy (bits) of the 256-bin histogram of ``grey_u8``."""
    counts = np.bincount(grey_u8.ravel(), minlength=256)
    p = counts[counts > 0] / grey_u8.size
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: -0.0 for a flat image reads as 0.0


def facts_of(img: Image.Image, data: bytes, stored_size: tuple[int, int] | None = None) -> ImageFacts:
    """The facts of ``img`` (already decoded, possibly at a reduced ``draft`` scale) and its ``data``.

    ``stored_size`` is the size the file declares (``img.size`` before any draft reduction); the
    recorded width and height are that size as displayed. Only a GREY_SIDE² array is made from the
    pixels, whatever the image's size.
    """
    orient = orientation(img)
    width, height = displayed_size(stored_size or img.size, orient)
    small = small_rgb(img)
    for step in _TRANSPOSE.get(orient, ()):
        small = small.transpose(step)  # square: a quarter turn keeps GREY_SIDE x GREY_SIDE
    grey_img = small if small.mode == "L" else small.convert("L")
    grey_u8 = np.asarray(grey_img, dtype=np.uint8)
    grey = grey_u8.astype(np.float32)
    return ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        phash=str(imagehash.phash(grey_img)),
        dhash=str(imagehash.dhash(grey_img)),
        width=width,
        height=height,
        sharpness=round(laplacian_variance(grey), DECIMALS - 2),
        brightness=round(float(grey.mean()) / 255.0, DECIMALS),
        contrast=round(float(grey.std()) / 255.0, DECIMALS),
        entropy=round(entropy_bits(grey_u8), DECIMALS),
        grey=is_grey(img.mode, small),
        aspect=round(width / height, DECIMALS) if height else math.inf,
    )
