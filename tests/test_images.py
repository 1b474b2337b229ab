from __future__ import annotations

import io

import pytest
from PIL import Image

from corpus.domain.errors import ImageError
from corpus.domain.images import inspect
from tests.support import jpeg, png


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_formats_are_recognised_by_content(fmt):
    out = io.BytesIO()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(out, fmt)
    info = inspect(out.getvalue())
    assert (info.format, info.width, info.height) == (fmt, 20, 10)
    assert info.content_type.startswith("image/")


def test_not_an_image():
    with pytest.raises(ImageError, match="not a recognised image"):
        inspect(b"%PDF-1.7 not an image")


def test_empty():
    with pytest.raises(ImageError, match="empty"):
        inspect(b"")


def test_truncated_jpeg_is_caught_by_decoding():
    data = jpeg(1, size=(256, 256))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        inspect(data[: len(data) // 2])


def test_pixel_cap_is_checked_before_decoding():
    with pytest.raises(ImageError, match="above the cap of 1000"):
        inspect(png(1, size=(100, 100)), max_pixels=1000)


def test_pillow_bomb_guard_is_reported_as_an_image_error():
    # A PNG header claiming 100k x 100k pixels: Pillow's own guard fires before ours.
    img = Image.new("1", (1, 1))
    out = io.BytesIO()
    img.save(out, "PNG")
    data = bytearray(out.getvalue())
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width, height (CRC now wrong)
    with pytest.raises(ImageError):
        inspect(bytes(data))
