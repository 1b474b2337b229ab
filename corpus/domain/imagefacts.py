"""The facts of one image as a value: what rows, manifest lines and the catalog carry.

Apart from :mod:`corpus.domain.facts` (which computes them with Pillow, NumPy and imagehash) so
that reading a manifest or a row never loads an imaging library: ``corpus pull`` and the CLI's
readers import this module only (``tests/test_import_time.py`` pins it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FACT_FIELDS = ("sha256", "phash", "dhash", "width", "height", "sharpness", "brightness", "contrast", "entropy", "grey", "aspect")
"""The facts' names, in the order they are written (Images row columns, manifest keys, catalog columns)."""


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """The facts of one image; :mod:`corpus.domain.facts` defines each field and its range."""

    sha256: str
    phash: str
    dhash: str
    width: int
    height: int
    sharpness: float
    brightness: float
    contrast: float
    entropy: float
    grey: bool
    aspect: float

    @property
    def phash_int(self) -> int:
        return int(self.phash, 16)

    @property
    def dhash_int(self) -> int:
        return int(self.dhash, 16)

    def to_json(self) -> dict[str, Any]:
        """The facts by :data:`FACT_FIELDS` name, JSON types (what rows and manifests carry)."""
        return {name: getattr(self, name) for name in FACT_FIELDS}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImageFacts | None:
        """The facts in ``obj`` (a row's or a line's properties), or None when it has none (not backfilled)."""
        if not isinstance(obj.get("sha256"), str) or not obj.get("sha256"):
            return None
        return cls(
            sha256=str(obj["sha256"]),
            phash=str(obj["phash"]),
            dhash=str(obj["dhash"]),
            width=int(obj["width"]),
            height=int(obj["height"]),
            sharpness=float(obj["sharpness"]),
            brightness=float(obj["brightness"]),
            contrast=float(obj["contrast"]),
            entropy=float(obj["entropy"]),
            grey=bool(obj["grey"]),
            aspect=float(obj["aspect"]),
        )
