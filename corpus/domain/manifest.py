"""A training set's manifest: one JSON object per line, gzip, in the documented order.

The contract (training-sets issue): blob ``<name>/<version>/manifest.jsonl.gz`` in the container
``CORPUS_TRAINSETS_CONTAINER`` (default ``trainsets``; a set rebuilt after a failed build,
attempt ``n`` > 0, has it at ``<name>/<version>/attempt-<n>/manifest.jsonl.gz``: the
``TrainingSets`` row's ``ManifestBlob`` names it, :func:`corpus.domain.trainsets.attempt_manifest_blob`),
each line exactly::

    {"container", "blob", "md5" (base64, as Azure stores Content-MD5), "size", "width", "height",
     "domain", "path", "version", "transform": {"name", "version"} | null,
     "source": {"blob", "md5"}, "labels": [...], "split": "train" | "val" | "test" | ...}

followed, when the image has facts (:mod:`corpus.domain.facts`; images ingested before facts
existed have them once ``corpus reindex --facts`` has run), by ``"sha256"`` (hex), ``"phash"``,
``"dhash"``, ``"sharpness"``, ``"brightness"``, ``"contrast"``, ``"entropy"``, ``"grey"`` and
``"aspect"``; ``width`` and ``height`` are then the size as displayed (EXIF orientation applied).

This module is the one model (:class:`ManifestEntry`), reader and writer of that line, shared by
the builder (:mod:`corpus.app.trainsets`), ``corpus pull``, the exports and :mod:`corpus.dataset`;
it is pure (no I/O but the stream it is handed), and :func:`iter_manifest` streams, so a manifest
of millions of lines is read in constant memory.

**Order.** Lines are in :func:`manifest_order_key` order: (container, the set's blob prefix, the
file's escaped name). That is what the builder produces without sorting (it reads each set's
``Images`` partition in key order), and it equals plain (container, blob) order only when file
names use ``[A-Za-z0-9._-]`` and no selected set's prefix is a prefix of another's.

**Gzip.** A manifest is one or more complete gzip members (:func:`gzip_member`: level 6, mtime 0,
no file name), so it is byte-deterministic whether written at once (:func:`write_manifest`) or
as Put Block blocks of a fixed number of lines (the builder).

A line that does not fit raises :class:`~corpus.domain.errors.MessageError` with its line number:
a manifest is written by us, so a bad line means corruption, never something to skip.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from corpus.domain.errors import MessageError
from corpus.domain.imagefacts import FACT_FIELDS, ImageFacts
from corpus.domain.keys import image_row_key
from corpus.domain.refs import TrainsetRef

MANIFEST_NAME = "manifest.jsonl.gz"


def manifest_blob(name: str, version: str) -> str:
    """Where the manifest of training set ``name``:``version`` lives in the training-sets container."""
    return f"{name}/{version}/{MANIFEST_NAME}"


def parse_ref(text: str, what: str = "training set") -> tuple[str, str]:
    """``NAME:VERSION`` → (name, version), both valid version-like names (they become blob path segments)."""
    return TrainsetRef.parse(text, what).pair


def b64_to_hex(md5_b64: str) -> str:
    try:
        raw = base64.b64decode(md5_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError(f"md5 {md5_b64!r} is not base64") from exc
    if len(raw) != 16:
        raise MessageError(f"md5 {md5_b64!r} is not 16 bytes")
    return raw.hex()


def hex_to_b64(md5_hex: str) -> str:
    """Hex MD5 (as the ``Images`` table keeps it) → base64 (as Azure's Content-MD5 and the manifest show it)."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")


def set_order_key(container: str, blob_prefix: str) -> tuple[str, str]:
    """The order in which sets are written into a manifest: container, then the set's blob prefix."""
    return container, blob_prefix


def manifest_order_key(container: str, blob: str) -> tuple[str, str, str]:
    """The documented order of manifest lines, as a function of one line.

    (container, the set's blob prefix, the file's ``Images`` RowKey): sets in order of their
    prefix (a blob's folder: file names hold no ``/``), then files in the order of their escaped
    name (:func:`corpus.domain.keys.image_row_key`). Equal to plain (container, blob) order when
    file names use only ``[A-Za-z0-9._-]`` and no selected set's prefix is a prefix of another's;
    in general it is not (``"a b"`` escapes to ``a~20b``, after ``a-b``; ``original/v2/`` holds set
    ``<root>@v2`` while ``original/v2/v1/`` holds set ``v2@v1``). It is what the build can produce
    by reading each set's partition in key order, with no sort and bounded memory.
    """
    folder, _, file = blob.rpartition("/")
    return (*set_order_key(container, folder + "/"), image_row_key(file))


GZIP_LEVEL = 6


def gzip_member(data: bytes) -> bytes:
    """One complete, deterministic gzip member (mtime 0, no file name, level :data:`GZIP_LEVEL`)."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


GUNZIP_OUT = 1 << 20
"""Decompressed bytes per step of :func:`gunzip_chunks`: a 4 MiB range of a manifest (JSON lines
compress ~10x) would otherwise inflate to ~40 MB at once."""


def gunzip_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream of one or more members (a builder's blocks), as the
    compressed chunks arrive (e.g. ranged downloads), at most :data:`GUNZIP_OUT` bytes at a time:
    bounded memory whatever the manifest's size."""
    d = zlib.decompressobj(wbits=31)
    for chunk in chunks:
        data = chunk
        while True:
            out = d.decompress(data, GUNZIP_OUT)
            if out:
                yield out
            if d.eof:  # one gzip member ended: the next begins in what is left
                data = d.unused_data
                d = zlib.decompressobj(wbits=31)
                if not data:
                    break
                continue
            data = d.unconsumed_tail
            if not data and len(out) < GUNZIP_OUT:
                break  # this chunk is used up and nothing more is pending


def split_lines(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines (without ``\n``) of a byte stream that arrives in arbitrary parts."""
    rest = b""
    for part in parts:
        rest += part
        *complete, rest = rest.split(b"\n")
        yield from complete
    if rest:
        yield rest


def block_id(index: int, prefix: str = "manifest") -> str:
    """Deterministic Put Block id of block ``index`` (all ids of one blob have the same length)."""
    return base64.b64encode(f"{prefix}-{index:08d}".encode()).decode("ascii")


MANIFEST_FIELDS = (
    "container",
    "blob",
    "md5",
    "size",
    "width",
    "height",
    "domain",
    "path",
    "version",
    "transform",
    "source",
    "labels",
    "split",
)
"""The fields of a line, in the order :meth:`ManifestEntry.to_line` writes them."""
FACT_KEYS = tuple(f for f in FACT_FIELDS if f not in ("width", "height"))
"""The facts a line adds after :data:`MANIFEST_FIELDS` when the image has them."""


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
    source_md5: str  # base64, or "" when unknown (ad-hoc pulls of transformed sets)
    labels: tuple[str, ...]
    split: str
    facts: ImageFacts | None = None

    @property
    def md5_hex(self) -> str:
        return b64_to_hex(self.md5)

    @property
    def sort_key(self) -> tuple[str, str, str]:
        """Its place in a manifest: :func:`manifest_order_key`."""
        return manifest_order_key(self.container, self.blob)

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
        } | ({k: getattr(self.facts, k) for k in FACT_KEYS} if self.facts is not None else {})

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


def _facts(obj: dict[str, Any], lineno: int) -> ImageFacts | None:
    if obj.get("sha256") is None:
        return None
    try:
        return ImageFacts.from_json(obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"manifest line {lineno}: malformed facts: {exc}") from exc


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
        facts=_facts(obj, lineno),
    )
    if not entry.container or not entry.blob:
        raise MessageError(f"manifest line {lineno}: empty container or blob")
    b64_to_hex(entry.md5)
    return entry


def iter_manifest(stream: IO[bytes]) -> Iterator[ManifestEntry]:
    """Stream the entries of a gzip manifest (a binary stream of the blob's bytes); :func:`iter_entries`."""
    return iter_entries(iter(lambda: stream.read(1024 * 1024), b""))


def iter_entries(chunks: Iterable[bytes]) -> Iterator[ManifestEntry]:
    """The entries of a gzip manifest arriving as compressed ``chunks`` (e.g. ranged downloads), in order.

    The order is checked (:func:`manifest_order_key`, strictly increasing): consumers rely on it
    to page, shard and find duplicates without holding the manifest in memory. A manifest of
    several gzip members (as the builder writes it, one per block) reads as one stream.
    """
    previous: tuple[str, str, str] | None = None
    for lineno, raw in enumerate(split_lines(gunzip_chunks(chunks)), start=1):
        if not raw.strip():
            continue
        entry = parse_line(raw, lineno)
        if previous is not None and entry.sort_key <= previous:
            raise MessageError(f"manifest line {lineno}: {entry.container}/{entry.blob} is out of order or repeated")
        previous = entry.sort_key
        yield entry


def write_manifest(entries: Iterable[ManifestEntry]) -> bytes:
    """The gzip bytes of a manifest of ``entries`` (sorted here); deterministic (:func:`gzip_member`)."""
    return gzip_member(encode_lines(sorted(entries, key=lambda e: e.sort_key)))


def encode_lines(entries: Iterable[ManifestEntry]) -> bytes:
    """The uncompressed bytes of ``entries`` as manifest lines, in the order given, each ending in ``\n``."""
    return "".join(e.to_line() + "\n" for e in entries).encode("utf-8")
