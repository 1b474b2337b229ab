"""Image formats the corpus accepts, their content types and file extensions: one table.

Pure data, so that the uploader can name a content type without loading Pillow.
"""

from __future__ import annotations

import mimetypes

CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # multi-picture JPEG, as many cameras write
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
}
"""The formats the corpus accepts, by Pillow format name."""

EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}
"""The extension a file of each format gets when the corpus names it."""

FORMAT_BY_EXTENSION = {
    "jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF", "webp": "WEBP",
}  # fmt: skip
"""File extensions (lower case, no dot) of the accepted formats."""


def content_type_of_name(name: str) -> str:
    """The content type a file name suggests (before its bytes are read)."""
    ext = name.rsplit(".", 1)[-1].lower()
    fmt = FORMAT_BY_EXTENSION.get(ext)
    return CONTENT_TYPES[fmt] if fmt else (mimetypes.guess_type(name)[0] or "application/octet-stream")
