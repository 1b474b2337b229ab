"""A training set's manifest: one JSON object per line, gzip, sorted by container then blob.

The contract (training-sets issue): blob ``<name>/<version>/manifest.jsonl.gz`` in the container
``CORPUS_TRAINSETS_CONTAINER`` (default ``trainsets``), each line exactly::

    {"container", "blob", "md5" (base64, as Azure stores Content-MD5), "size", "width", "height",
     "domain", "path", "version", "transform": {"name", "version"} | null,
     "source": {"blob", "md5"}, "labels": [...], "split": "train" | "val" | "test" | ...}

This module is the one reader and writer of that line, shared by the builder, ``corpus pull``,
the exports and :mod:`corpus.dataset`; it is pure (no I/O but the stream it is handed), and
:func:`iter_manifest` streams, so a manifest of millions of lines is read in constant memory.
A line that does not fit raises :class:`~corpus.domain.errors.MessageError` with its line number:
a manifest is written by us, so a bad line means corruption, never something to skip.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from corpus.domain.errors import MessageError

MANIFEST_NAME = "manifest.jsonl.gz"


def manifest_blob(name: str, version: str) -> str:
    """Where the manifest of training set ``name``:``version`` lives in the training-sets container."""
    return f"{name}/{version}/{MANIFEST_NAME}"


def parse_ref(text: str) -> tuple[str, str]:
    """``NAME:VERSION`` → (name, version); both non-empty, no ``/`` (they become blob path segments)."""
    name, sep, version = text.partition(":")
    for part in (name, version):
        if not sep or not part or "/" in part or part in (".", "..") or len(part) > 128:
            raise MessageError(f"training set {text!r}: expected NAME:VERSION, each 1-128 characters without '/'")
    return name, version


def b64_to_hex(md5_b64: str) -> str:
    try:
        raw = base64.b64decode(md5_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError(f"md5 {md5_b64!r} is not base64") from exc
    if len(raw) != 16:
        raise MessageError(f"md5 {md5_b64!r} is not 16 bytes")
    return raw.hex()


def hex_to_b64(md5_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One line of a manifest: one exact file (container, blob, MD5) and what it means for training."""

    container: str
    blob: str
    md5: str  # base64 of the 16 MD5 bytes, as Azure stores Content-MD5
    size: int
    width: int
    height: int
    domain: str
    path: str
    version: str
    transform: tuple[str, str] | None
    source_blob: str
    source_md5: str
    labels: tuple[str, ...]
    split: str

    @property
    def md5_hex(self) -> str:
        return b64_to_hex(self.md5)

    @property
    def sort_key(self) -> tuple[str, str]:
        return (self.container, self.blob)

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "blob": self.blob,
            "md5": self.md5,
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "domain": self.domain,
            "path": self.path,
            "version": self.version,
            "transform": {"name": self.transform[0], "version": self.transform[1]} if self.transform else None,
            "source": {"blob": self.source_blob, "md5": self.source_md5},
            "labels": list(self.labels),
            "split": self.split,
        }

    def to_line(self) -> str:
        """The canonical line (no spaces, keys in contract order, UTF-8 kept): equal entries, equal bytes."""
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))


def _str(obj: dict[str, Any], key: str, lineno: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MessageError(f"manifest line {lineno}: {key!r} must be a string")
    return value


def _int(obj: dict[str, Any], key: str, lineno: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MessageError(f"manifest line {lineno}: {key!r} must be a non-negative integer")
    return value


def parse_line(line: str | bytes, lineno: int = 0) -> ManifestEntry:
    """One manifest line → :class:`ManifestEntry`; a line that breaks the contract raises ``MessageError``."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"manifest line {lineno}: not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MessageError(f"manifest line {lineno}: not a JSON object")
    transform = obj.get("transform")
    if transform is not None and not (
        isinstance(transform, dict) and isinstance(transform.get("name"), str) and isinstance(transform.get("version"), str)
    ):
        raise MessageError(f"manifest line {lineno}: 'transform' must be null or {{'name', 'version'}}")
    source = obj.get("source")
    if not isinstance(source, dict):
        raise MessageError(f"manifest line {lineno}: 'source' must be an object")
    labels = obj.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise MessageError(f"manifest line {lineno}: 'labels' must be a list of strings")
    entry = ManifestEntry(
        container=_str(obj, "container", lineno),
        blob=_str(obj, "blob", lineno),
        md5=_str(obj, "md5", lineno),
        size=_int(obj, "size", lineno),
        width=_int(obj, "width", lineno),
        height=_int(obj, "height", lineno),
        domain=_str(obj, "domain", lineno),
        path=_str(obj, "path", lineno),
        version=_str(obj, "version", lineno),
        transform=(transform["name"], transform["version"]) if transform else None,
        source_blob=_str(source, "blob", lineno),
        source_md5=_str(source, "md5", lineno),
        labels=tuple(labels),
        split=_str(obj, "split", lineno),
    )
    if not entry.container or not entry.blob:
        raise MessageError(f"manifest line {lineno}: empty container or blob")
    b64_to_hex(entry.md5)
    return entry


def iter_manifest(stream: IO[bytes]) -> Iterator[ManifestEntry]:
    """Stream the entries of a gzip manifest (a binary stream of the blob's bytes), in file order.

    The order is checked (container then blob, strictly increasing): consumers rely on it to
    page, shard and find duplicates without holding the manifest in memory.
    """
    previous: tuple[str, str] | None = None
    with gzip.GzipFile(fileobj=stream, mode="rb") as lines:
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            entry = parse_line(raw, lineno)
            if previous is not None and entry.sort_key <= previous:
                raise MessageError(f"manifest line {lineno}: {entry.container}/{entry.blob} is out of order or repeated")
            previous = entry.sort_key
            yield entry


def write_manifest(entries: Iterable[ManifestEntry]) -> bytes:
    """The gzip bytes of a manifest of ``entries`` (sorted here); deterministic (gzip mtime 0)."""
    body = "".join(e.to_line() + "\n" for e in sorted(entries, key=lambda e: e.sort_key)).encode("utf-8")
    return gzip.compress(body, mtime=0)
