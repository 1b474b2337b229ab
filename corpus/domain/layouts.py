"""Where a training set's files go when they leave the corpus: pure naming rules.

* **Local trees** (``corpus pull``): ``imagefolder`` writes ``<split>/<label>/<file>`` (the layout
  torchvision's ``ImageFolder`` and Hugging Face ``imagefolder`` read), ``corpus`` mirrors
  ``<container>/<blob>``. Every path component is made safe on Linux, macOS and Windows alike
  (:func:`safe_component`), reversibly: characters Windows can't hold, ``%`` itself, a trailing dot or
  space and reserved device names are percent-encoded; a component too long for a file system
  is shortened with a hash and reported (its original is in the pull's name map). Names that
  differ only in case, or that collide after the mapping, get a ``~<hash>`` before the extension,
  so two blobs never share one file on a case-insensitive file system.
* **WebDataset shards** (``corpus export --format webdataset``): the key of a sample is its
  ``<container>/<blob>``, dots in the file name percent-encoded (WebDataset cuts a key at the first
  dot of the member's base name); members ``<key>.<ext>`` and ``<key>.json``.
  Shard boundaries are a pure function of the manifest and the shard size (:func:`plan_shards`).
* **Azure ML** (``--format azureml``): one JSONL line per image in AutoML's image-classification
  format (:func:`azureml_line`), and an ``MLTable`` (:func:`mltable_yaml`) beside each split's JSONL.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from corpus.domain.manifest import ManifestEntry

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
_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}


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
    """Where one manifest entry is written, relative to DEST (``/``-separated), and how it was named."""

    rel: str
    changed: bool
    lossy: bool


def _with_suffix(name: str, tag: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}~{tag}.{ext}" if dot and stem else f"{name}~{tag}"


def local_paths(entries: Sequence[ManifestEntry], layout: str) -> list[LocalPath]:
    """Relative local paths for ``entries`` (same order), unique even on case-insensitive file systems.

    ``imagefolder``: ``[<split>/]<label>/<file>``; ``corpus``: ``<container>/<blob>``. Every
    component passes :func:`safe_component`. Files whose names would collide in one folder (same
    name up to case, after the mapping) all get ``~<hash of container/blob>``, so the result
    depends only on the set of entries, not on their order or on which one came first.
    """
    if layout not in ("imagefolder", "corpus"):
        raise ValueError(f"unknown layout {layout!r}: imagefolder or corpus")
    planned: list[tuple[str, str, bool, bool]] = []  # dir, file, changed, lossy
    for e in entries:
        if layout == "imagefolder":
            raw_dirs = ([e.split] if e.split else []) + [label_key(e.labels)]
            raw_file = e.blob.rpartition("/")[2]
        else:
            *raw_dirs, raw_file = [e.container, *e.blob.split("/")]
        parts = [safe_component(p) for p in [*raw_dirs, raw_file]]
        directory = "/".join(p.name for p in parts[:-1])
        planned.append((directory, parts[-1].name, any(p.changed for p in parts), any(p.lossy for p in parts)))
    seen: dict[tuple[str, str], int] = {}
    for directory, file, _, _ in planned:
        key = (directory.casefold(), file.casefold())
        seen[key] = seen.get(key, 0) + 1
    out: list[LocalPath] = []
    for e, (directory, file, changed, lossy) in zip(entries, planned, strict=True):
        if seen[(directory.casefold(), file.casefold())] > 1:
            file = _with_suffix(file, short_hash(f"{e.container}/{e.blob}"))
            changed = True
        out.append(LocalPath(f"{directory}/{file}" if directory else file, changed, lossy))
    return out


# -- WebDataset --------------------------------------------------------------------------------

TAR_BLOCK = 512
SAMPLE_OVERHEAD = 4 * TAR_BLOCK + 1024
"""Planning allowance per sample beyond its bytes: two headers (with a PAX record for long names),
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


def sample_members(entry: ManifestEntry, key: str) -> tuple[str, str]:
    """(image member, json member) of a sample: ``<key>.<ext>`` and ``<key>.json``."""
    _, ext = split_ext(entry.blob.rpartition("/")[2])
    return f"{key}.{ext}", f"{key}.json"


def sample_json(entry: ManifestEntry, key: str) -> bytes:
    """The ``<key>.json`` member: the manifest line plus the key; canonical bytes."""
    return canonical_json({"__key__": key, **entry.to_json()})


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON: equal objects, equal bytes (deterministic export blobs)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """Shard ``index`` of ``split``: the ``count`` entries of that split from ordinal ``start`` on."""

    split: str
    index: int
    start: int
    count: int

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def plan_shards(entries: Iterable[ManifestEntry], shard_bytes: int) -> list[ShardPlan]:
    """Greedy boundaries per split, in manifest order: a shard closes before the sample that would
    take it past ``shard_bytes`` (a sample bigger than that gets a shard of its own). A pure
    function of the manifest and the shard size, so every run of the request plans the same shards."""
    if shard_bytes <= 0:
        raise ValueError("shard size must be positive")
    state: dict[str, list[int]] = {}  # split → [ordinal, shard start, shard count, shard bytes]
    plans: list[ShardPlan] = []
    index: dict[str, int] = {}
    for e in entries:
        st = state.setdefault(e.split, [0, 0, 0, 0])
        cost = e.size + SAMPLE_OVERHEAD
        if st[2] and st[3] + cost > shard_bytes:
            plans.append(ShardPlan(e.split, index.get(e.split, 0), st[1], st[2]))
            index[e.split] = index.get(e.split, 0) + 1
            st[1], st[2], st[3] = st[0], 0, 0
        st[0] += 1
        st[2] += 1
        st[3] += cost
    for split, st in state.items():
        if st[2]:
            plans.append(ShardPlan(split, index.get(split, 0), st[1], st[2]))
    return sorted(plans, key=lambda p: (p.split, p.index))


def split_folder(split: str) -> str:
    """A split as a blob path segment (``train``…; an empty split is ``all``)."""
    return safe_component(split).name if split else "all"


# -- Azure ML ----------------------------------------------------------------------------------


def azureml_line(entry: ManifestEntry, image_url: str) -> str:
    """One line of AutoML's image-classification JSONL: ``image_url``, ``image_details``, ``label``
    (a string for one label; a list, the multi-label format, for several)."""
    _, ext = split_ext(entry.blob.rpartition("/")[2])
    label: Any = entry.labels[0] if len(entry.labels) == 1 else list(entry.labels)
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
