"""What ``corpus upload`` sends, decided without touching the network: pure rules.

* Which local files are images to send, which are junk to skip (and count), and what their staged
  names are: ``<domain>/<version>/<path relative to SRC>``, with ``/`` separators, backslashes
  (Windows-style names) read as separators, and Unicode normalised to NFC so that a drop copied
  from macOS (NFD file names) lands under the same names as from anywhere else.
* Given what is already remote (staged, or ingested into ``original/``), whether a file is
  uploaded, skipped as already there, or reported as a conflict.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from corpus.domain.display import md5_shown
from corpus.domain.errors import InvalidNameError
from corpus.domain.media import FORMAT_BY_EXTENSION, content_type_of_name
from corpus.domain.paths import is_junk_file, parse_staged_name

DEFAULT_EXTENSIONS = frozenset(FORMAT_BY_EXTENSION)


class Skip(StrEnum):
    JUNK = "junk"
    HIDDEN = "hidden"
    NOT_IMAGE = "not an image extension"
    SYMLINK_OUT = "symlink leaving the source folder"


def parse_extensions(spec: str | None) -> frozenset[str]:
    """``"jpg,PNG, .webp"`` → {jpg, png, webp}; None → the defaults."""
    if not spec:
        return DEFAULT_EXTENSIONS
    exts = frozenset(e.strip().lstrip(".").lower() for e in spec.split(",") if e.strip())
    if not exts:
        raise ValueError("--ext needs at least one extension")
    return exts


def classify(name: str, extensions: frozenset[str]) -> Skip | None:
    """Why a local file is not sent, or None when it is an image to upload."""
    if is_junk_file(name):
        return Skip.JUNK
    if name.startswith("."):
        return Skip.HIDDEN
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return None if ext in extensions else Skip.NOT_IMAGE


def relative_name(parts: list[str]) -> str:
    """Join local path components into the staged relative name (see the module docstring)."""
    pieces: list[str] = []
    for part in parts:
        pieces.extend(p for p in unicodedata.normalize("NFC", part).replace("\\", "/").split("/") if p)
    return "/".join(pieces)


def staged_name(domain: str, version: str, rel: str) -> str:
    """The staging blob name; raises :class:`~corpus.domain.errors.InvalidNameError` if it breaks the contract."""
    name = f"{domain}/{version}/{rel}"
    parse_staged_name(name)
    return name


def content_type(name: str) -> str:
    return content_type_of_name(name)


class Action(StrEnum):
    UPLOAD = "upload"
    SKIP_STAGED = "already staged"
    SKIP_INGESTED = "already ingested"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""


def decide(local_md5: str, staged_md5: str | None, original_md5: str | None) -> Decision:
    """Send only what is missing; never write over a different file under the same name."""
    if original_md5 is not None:
        if original_md5 == local_md5:
            return _SKIP_INGESTED
        ingested, local = md5_shown(original_md5), md5_shown(local_md5)
        return Decision(Action.CONFLICT, f"already ingested with different content (MD5 {ingested}, local {local})")
    if staged_md5 is not None:
        if staged_md5 == local_md5:
            return _SKIP_STAGED
        staged, local = md5_shown(staged_md5) or "unknown", md5_shown(local_md5)
        return Decision(Action.CONFLICT, f"already staged with different content (MD5 {staged}, local {local})")
    return _UPLOAD


_SKIP_INGESTED, _SKIP_STAGED, _UPLOAD = Decision(Action.SKIP_INGESTED), Decision(Action.SKIP_STAGED), Decision(Action.UPLOAD)


__all__ = [
    "DEFAULT_EXTENSIONS", "Action", "Decision", "InvalidNameError", "Skip", "classify", "content_type", "decide",
    "parse_extensions", "relative_name", "staged_name",
]  # fmt: skip
