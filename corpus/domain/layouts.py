"""Where a training set's files go when they leave the corpus: pure naming and ordering rules.

* **Local trees** (``corpus pull``): ``imagefolder`` writes ``<split>/<class>/<set path>__<file>``
  (the layout torchvision's ``ImageFolder`` and Hugging Face ``imagefolder`` read), the set path's
  ``/`` written as ``_`` (``train/jay/blue_calm_jay__IMG_0000.jpg``), so camera names that repeat
  across sets stay apart and readable; ``corpus`` mirrors ``<container>/<blob>``. Every path
  component is made safe on Linux, macOS and Windows alike (:func:`safe_component`), reversibly:
  characters Windows can't hold, ``%`` itself, a trailing dot or space and reserved device names
  (:data:`WINDOWS_DEVICE_NAMES`, the one list) are percent-encoded; a component too long for a file
  system is shortened with a hash and reported (its original is in the pull's name map). Only
  names that truly collide (the same name up to case, after the mapping) get a ``~<hash>`` before
  the extension, and a renamed name never equals another file's name (:func:`renamed_file`).
* **Classes** are ordered by their folder name (:func:`class_order`): exactly the order in which
  ``ImageFolder`` sorts a pulled copy's folders, so class indices agree everywhere (datasets,
  ``classes.txt``, Parquet labels, pulled copies), even for names the mapping encodes.
* **Shards** (``corpus export --format webdataset|parquet``): samples are assigned to shards by a
  seeded permutation of each split (:func:`permutation`, :func:`plan_mixed_shards`), so every
  shard holds the training set's class mix. A WebDataset sample is ``<key>.<image ext>``,
  ``<key>.cls`` (the class index) and ``<key>.json`` (the manifest line); its key is its
  ``<container>/<blob>``, dots in the file name percent-encoded (WebDataset cuts a key at the first
  dot of the member's base name).
* **Azure ML** (``--format azureml``): one JSONL line per image in AutoML's image-classification
  format (:func:`azureml_line`), and an ``MLTable`` (:func:`mltable_yaml`) beside each split's JSONL.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from corpus.domain.manifest import ManifestEntry
from corpus.domain.media import EXTENSIONS, FORMAT_BY_EXTENSION

UNLABELED = "_unlabeled"
"""The label folder of an image with no label (ad-hoc pulls of sets without tags)."""

LABEL_JOIN = "+"
"""An image with several labels belongs to the class of their sorted, joined names (documented)."""

MAX_COMPONENT_BYTES = 200
"""UTF-8 bytes per path component: 255 on Linux/macOS and 255 UTF-16 units on Windows, less room
for the pull's temporary suffix and a collision suffix."""

PART_SUFFIX = ".corpus-part"
"""A download in progress; never a final name (no image extension ends so)."""

_WINDOWS_BAD = set('<>:"\\|?*%') | {chr(c) for c in range(32)} | {"\x7f"}

WINDOWS_DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$", "clock$"}
    | {f"{dev}{n}" for dev in ("com", "lpt") for n in ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "¹", "²", "³")}
)
"""Every name Windows reserves for a device, case-insensitively and whatever the extension (``CON``,
``con.jpg``, ``COM¹.png``, ``CONIN$``): the one list :func:`safe_component` encodes. Superscript
digits count on Windows 10+ (``COM¹``); ``CONIN$``/``CONOUT$`` are the console's own devices."""
_RESERVED = WINDOWS_DEVICE_NAMES


def _stem(name: str) -> str:
    return name.split(".")[0].rstrip(" ").casefold()


def label_key(labels: Sequence[str]) -> str:
    """The one class name of an image: its label, the sorted labels joined by ``+``, or ``_unlabeled``."""
    return LABEL_JOIN.join(sorted(labels)) if labels else UNLABELED


def _pct(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


@dataclass(frozen=True, slots=True)
class SafeName:
    name: str
    changed: bool  # differs from the original
    lossy: bool  # shortened: the original is recoverable only from the pull's name map


_PLAIN = re.compile(r"[^<>:\"\\|?*%/\x00-\x1f\x7f]+")


@functools.lru_cache(maxsize=65536)
def safe_component(name: str) -> SafeName:
    """One path component made safe for every common file system (see the module docstring).

    Reversible by percent-decoding unless ``lossy``: ``%`` itself is always encoded. Cached:
    folder names repeat across a whole training set.
    """
    plain = _PLAIN.fullmatch(name) and name[-1] not in " ." and len(name.encode("utf-8")) <= MAX_COMPONENT_BYTES
    if plain and _stem(name) not in _RESERVED:
        return SafeName(name, False, False)  # the common case, decided without building a new string
    out = "".join(_pct(c) if c in _WINDOWS_BAD or c == "/" else c for c in name)
    if out in ("", ".", ".."):
        out = "".join(_pct(c) for c in out) or "%00"
    if out[-1] in " .":
        out = out[:-1] + _pct(out[-1])
    if _stem(out) in _RESERVED:
        out = _pct(out[0]) + out[1:]
    lossy = False
    if len(out.encode("utf-8")) > MAX_COMPONENT_BYTES:
        stem, dot, ext = out.rpartition(".")
        ext = dot + ext if dot and len(ext) <= 16 else ""
        if not dot or len(ext) > 16:
            stem = out
        room = MAX_COMPONENT_BYTES - len(ext.encode("utf-8")) - 12
        cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")
        out = f"{cut}~{short_hash(name)}{ext}"
        lossy = True
    return SafeName(out, out != name, lossy)


def unpct(name: str) -> str:
    """Reverse of :func:`safe_component` for a name that is not ``lossy``."""
    from urllib.parse import unquote

    return unquote(name, errors="strict")


@dataclass(frozen=True, slots=True)
class LocalPath:
    """Where one manifest entry is written, relative to DEST (``/``-separated), and how it was named:
    ``changed`` when it differs from the documented name (:func:`planned_path`: encoded or renamed)."""

    rel: str
    changed: bool
    lossy: bool


SET_SEP = "_"
"""Joins the segments of a set's path in a pulled file's name (``blue/calm/jay`` → ``blue_calm_jay``)."""
FILE_SEP = "__"
"""Between the set's path and the camera's file name: ``blue_calm_jay__IMG_0000.jpg``."""


def _with_suffix(name: str, tag: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}~{tag}.{ext}" if dot and stem else f"{name}~{tag}"


def readable_file(entry: ManifestEntry) -> str:
    """The imagefolder file name of ``entry`` before the safety mapping: ``<set path>__<file>``."""
    file = entry.blob.rpartition("/")[2]
    prefix = entry.path.strip("/").replace("/", SET_SEP)
    return f"{prefix}{FILE_SEP}{file}" if prefix else file


@dataclass(frozen=True, slots=True)
class PlannedPath:
    """An entry's documented local name, before collisions are resolved."""

    directory: str
    file: str
    changed: bool  # the safety mapping changed a component
    lossy: bool

    @property
    def fold(self) -> str:
        """The name as a case-insensitive file system sees it (what must be unique)."""
        return f"{self.directory}/{self.file}".casefold()

    def rel(self, file: str | None = None) -> str:
        f = self.file if file is None else file
        return f"{self.directory}/{f}" if self.directory else f


def planned_path(entry: ManifestEntry, layout: str) -> PlannedPath:
    """``imagefolder``: ``[<split>/]<class>/<set path>__<file>``; ``corpus``: ``<container>/<blob>``;
    every component through :func:`safe_component`. A pure function of one entry."""
    if layout == "imagefolder":
        raw_dirs = ([entry.split] if entry.split else []) + [label_key(entry.labels)]
        raw_file = readable_file(entry)
    elif layout == "corpus":
        *raw_dirs, raw_file = [entry.container, *entry.blob.split("/")]
    else:
        raise ValueError(f"unknown layout {layout!r}: imagefolder or corpus")
    parts = [safe_component(p) for p in [*raw_dirs, raw_file]]
    directory = "/".join(p.name for p in parts[:-1])
    return PlannedPath(directory, parts[-1].name, any(p.changed for p in parts), any(p.lossy for p in parts))


RENAME_HASH_LENGTHS = (10, 20, 40)


def renamed_file(planned: PlannedPath, entry: ManifestEntry, taken: Callable[[str], bool]) -> str:
    """The file name of an entry whose planned name collides: ``<stem>~<hash of container/blob>.<ext>``,
    the hash lengthened while the result is ``taken`` (``taken(fold)``: another file of the
    selection already has that name, up to case), so a rename never lands on a real file's name."""
    for n in RENAME_HASH_LENGTHS:
        candidate = _with_suffix(planned.file, short_hash(f"{entry.container}/{entry.blob}", n))
        if not taken(f"{planned.directory}/{candidate}".casefold()):
            return candidate
    raise ValueError(f"no free local name for {entry.container}/{entry.blob}")


def local_paths(entries: Sequence[ManifestEntry], layout: str) -> list[LocalPath]:
    """Relative local paths for ``entries`` (same order), unique even on case-insensitive file systems.

    Files whose planned names collide (same name up to case, after the mapping) all get
    :func:`renamed_file`, so the result depends only on the set of entries, not on their order.
    In memory: ``corpus pull`` does the same with its counts on disk (:mod:`corpus.pull.names`).
    """
    planned = [planned_path(e, layout) for e in entries]
    seen: dict[str, int] = {}
    for p in planned:
        seen[p.fold] = seen.get(p.fold, 0) + 1
    out: list[LocalPath] = []
    for e, p in zip(entries, planned, strict=True):
        if seen[p.fold] > 1:
            file = renamed_file(p, e, lambda fold: fold in seen)
            out.append(LocalPath(p.rel(file), True, p.lossy))
        else:
            out.append(LocalPath(p.rel(), p.changed, p.lossy))
    return out


def class_folder(name: str) -> str:
    """The folder a class's images are pulled into (``imagefolder``)."""
    return safe_component(name).name


def class_order(names: Iterable[str]) -> list[str]:
    """Class names in index order: by their folder name, as ``ImageFolder`` sorts a pulled copy
    (``sorted(os.scandir(...))``), so index ``i`` is the same class in every way out of the corpus.
    Equal to ``sorted(names)`` when no name needs encoding (:func:`safe_component`)."""
    return sorted(set(names), key=lambda c: (class_folder(c), c))


# -- WebDataset --------------------------------------------------------------------------------

TAR_BLOCK = 512
SAMPLE_OVERHEAD = 6 * TAR_BLOCK + 1024
"""Planning allowance per sample beyond its bytes: three headers (with a PAX record for long names),
padding, and its JSON. Boundaries only need to be a deterministic function, not exact."""


def split_ext(file: str) -> tuple[str, str]:
    stem, dot, ext = file.rpartition(".")
    if not dot or not stem:
        return file, "bin"
    return stem, ext.lower()


def sample_key(entry: ManifestEntry) -> str:
    """``<container>/<dir…>/<file>`` with ``%`` and ``.`` of the file name percent-encoded.

    A pure function of the blob name and injective (blob names are unique per container), so a
    key can never appear in two shards, whichever shards and splits the entries fall into.
    WebDataset cuts a key at the first dot of a member's base name, hence the encoding of dots."""
    directory, _, file = entry.blob.rpartition("/")
    file = file.replace("%", "%25").replace(".", "%2E")
    return f"{entry.container}/{directory}/{file}" if directory else f"{entry.container}/{file}"


IMAGE_FORMATS = ("keep", "jpg", "png")
"""``--image-format``: keep each image's bytes, or re-encode every image to JPEG or PNG at export."""


def image_ext(entry: ManifestEntry, image_format: str = "keep") -> str:
    """The image member's extension: ``jpg``/``png`` when re-encoded; with ``keep``, the corpus's
    one extension for the file's format (``jpeg`` → ``jpg``, ``tiff`` → ``tif``), lower case."""
    if image_format != "keep":
        return image_format
    _, ext = split_ext(entry.blob.rpartition("/")[2])
    fmt = FORMAT_BY_EXTENSION.get(ext)
    return EXTENSIONS[fmt].lstrip(".") if fmt else ext


KEEP_EXTENSIONS = "jpg;png;gif;bmp;tif;webp"
"""The ``to_tuple`` alternatives that match every image member of a ``keep`` export."""


def sample_members(entry: ManifestEntry, key: str, image_format: str = "keep") -> tuple[str, str, str]:
    """(image, class, json) member names of a sample: ``<key>.<ext>``, ``<key>.cls``, ``<key>.json``."""
    return f"{key}.{image_ext(entry, image_format)}", f"{key}.cls", f"{key}.json"


def sample_json(entry: ManifestEntry, key: str) -> bytes:
    """The ``<key>.json`` member: the manifest line plus the key; canonical bytes."""
    return canonical_json({"__key__": key, **entry.to_json()})


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON: equal objects, equal bytes (deterministic export blobs)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def permutation(n: int, seed: int, split: str) -> array[int]:
    """A seeded permutation of ``range(n)``: ``order[position] = ordinal`` (the entry's place among its
    split's entries in manifest order). Fisher-Yates driven by ``random.Random(str).random()``, the
    one part of Python's ``random`` whose sequence is guaranteed across versions; 4 bytes an entry."""
    rng = random.Random(f"corpus-shards:{seed}:{split}")  # noqa: S311 - a reproducible order, not secrecy
    order = array("I", range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """The shards of one split: ``order`` (position → ordinal) and where each shard starts.

    Shard ``k`` holds the entries at positions ``starts[k] .. starts[k+1]-1`` of the permuted
    order, written in that order: a random sample of the split, so of its class mix."""

    split: str
    order: array[int]
    starts: tuple[int, ...]

    @property
    def shards(self) -> int:
        return len(self.starts)

    def count(self, shard: int) -> int:
        end = self.starts[shard + 1] if shard + 1 < len(self.starts) else len(self.order)
        return end - self.starts[shard]

    def positions(self) -> array[int]:
        """ordinal → position (the inverse permutation)."""
        pos = array("I", bytes(4 * len(self.order)))
        for p, o in enumerate(self.order):
            pos[o] = p
        return pos

    def shard_of(self, position: int) -> int:
        return bisect_right(self.starts, position) - 1


def plan_split(split: str, sizes: Sequence[int], shard_bytes: int, seed: int) -> SplitPlan:
    """Shard boundaries of one split: walk the permuted order, closing a shard before the sample
    that would take it past ``shard_bytes`` (a bigger sample gets a shard of its own). A pure
    function of the split's sizes in manifest order, the shard size and the seed."""
    if shard_bytes <= 0:
        raise ValueError("shard size must be positive")
    order = permutation(len(sizes), seed, split)
    starts: list[int] = []
    held = 0
    for pos, ordinal in enumerate(order):
        cost = sizes[ordinal] + SAMPLE_OVERHEAD
        if not starts or (held + cost > shard_bytes and pos > starts[-1]):
            starts.append(pos)
            held = 0
        held += cost
    return SplitPlan(split, order, tuple(starts))


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def split_folder(split: str) -> str:
    """A split as a blob path segment (``train``…; an empty split is ``all``)."""
    return safe_component(split).name if split else "all"


# -- Azure ML ----------------------------------------------------------------------------------


def azureml_multilabel(label_counts: Iterable[int]) -> bool:
    """Whether a training set is exported in AutoML's multi-label format: unless every image has
    exactly one label. Decided once per export, so ``label`` has one type in every file."""
    return any(n != 1 for n in label_counts)


def azureml_line(entry: ManifestEntry, image_url: str, multilabel: bool) -> str:
    """One line of AutoML's image-classification JSONL: ``image_url``, ``image_details``, ``label``:
    a string (multi-class) or, when ``multilabel`` (:func:`azureml_multilabel`), a list for every line."""
    _, ext = split_ext(entry.blob.rpartition("/")[2])
    label: Any = list(entry.labels) if multilabel else entry.labels[0]
    line = {
        "image_url": image_url,
        "image_details": {"format": ext, "width": f"{entry.width}px", "height": f"{entry.height}px"},
        "label": label,
    }
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def mltable_yaml(jsonl_name: str) -> str:
    """The ``MLTable`` beside ``jsonl_name``: ``az ml data create --type mltable --path <folder>``
    registers it; ``image_url`` is typed ``stream_info`` as AutoML requires."""
    return (
        "$schema: https://azuremlschemas.azureedge.net/latest/MLTable.schema.json\n"
        "type: mltable\n"
        "paths:\n"
        f"  - file: ./{jsonl_name}\n"
        "transformations:\n"
        "  - read_json_lines:\n"
        "      encoding: utf8\n"
        "      invalid_lines: error\n"
        "      include_path_column: false\n"
        "  - convert_column_types:\n"
        "      - columns: image_url\n"
        "        column_type: stream_info\n"
    )
