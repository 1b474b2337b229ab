"""Training sets, pure: the request message, the canonical definition, labels, splits, manifest lines.

A training set ``(name, version)`` is an immutable, verifiable list of exact files. Everything that
decides *which* files and *what they say* lives here, without I/O, so it is unit-tested alone:

* :class:`TrainsetRequest`: the ``trainset-requests`` message, parsed strictly like
  :mod:`corpus.domain.messages` (unknown fields, wrong types and empty names are refused);
* :meth:`TrainsetRequest.definition`: the canonical definition JSON. Two requests with the same
  meaning have the same definition (tags normalised and sorted, sources de-duplicated and sorted,
  split keys sorted); the definition is what makes "same name+version again" a no-op and "same
  name+version, other definition" a refusal. It is bounded by :data:`MAX_DEFINITION_CHARS`;
* :func:`assign_split`: the split of an image is a function of its *source original's* MD5 only,
  so every variant of one original, and identical files under two names, land in the same split.
  Bucket = first 8 bytes of SHA-256(md5 bytes) mod 100; splits take consecutive bucket ranges in
  the *sorted order of their names* (so ``{"train":80,"val":10,"test":10}`` and the same object
  written in another key order are one definition);
* **Clusters.** With facts (:mod:`corpus.domain.facts`, :mod:`corpus.domain.dupindex`), the MD5
  that decides the split is the one of the original's *duplicate cluster* (the cluster's founding
  content): exact copies, re-encodes, resizes and the other near duplicates of a picture, and all
  their transforms, land in one split, so nothing of the test split leaks into training. A picture
  without duplicates is its own cluster: its split is the one it always had. An image whose split
  differs from the one its own MD5 gives was *moved to keep its cluster whole* (:func:`moved`);
* ``dedupe`` (``exact`` | ``near``) keeps one image per exact content or per cluster, the first in
  manifest order, and reports the others as skipped ``duplicate``; ``where`` (a
  :mod:`corpus.domain.where` expression, stored in its canonical form) keeps only the images whose
  facts match. Both are in the canonical definition only when given, so definitions written
  before they existed are unchanged;
* :func:`assign_labels`: with ``classes``, an image gets the one class whose tag its set carries;
  zero or several matching classes are reported (:class:`LabelOutcome`), never guessed;
* the manifest line itself (model, codec, order) is :mod:`corpus.domain.manifest`'s, shared with
  ``corpus pull``, the exports and the datasets.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from corpus.domain.errors import InvalidNameError, MessageError
from corpus.domain.limits import MAX_MESSAGE_BYTES
from corpus.domain.manifest import MANIFEST_NAME, manifest_blob
from corpus.domain.messages import Fields, decode_body
from corpus.domain.paths import ROOT_PATH, validate_domain, validate_version
from corpus.domain.tags import normalize, normalize_tag
from corpus.domain.where import canonical as canonical_where

MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES * 3 // 4
"""A request must fit one queue message (64 KiB) even after base64 (host.json's messageEncoding)."""
MAX_DEFINITION_CHARS = 32 * 1024
"""A canonical definition is stored in one table string property (32 K UTF-16 code units); larger
requests are refused when they are made, not when they are stored."""

MAX_SOURCES = 100
MAX_CLASSES = 1000
BUCKETS = 100
DEFAULT_SPLIT: dict[str, int] = {"train": 100}

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class Dedupe(StrEnum):
    """``trainset create --dedupe``: keep one image per exact content, or per duplicate cluster."""

    EXACT = "exact"
    NEAR = "near"


class TrainsetConflictError(MessageError):
    """The training set (name, version) exists with another definition: immutable, use a new version."""


@dataclass(frozen=True, slots=True)
class TrainsetSource:
    """One source of a request: one set by ``path`` + ``version``, or every set carrying all ``tags``
    (optionally of one ``version``); originals unless ``transform`` = (name, version)."""

    domain: str
    path: str | None = None
    version: str | None = None
    tags: tuple[str, ...] = ()
    transform: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"domain": self.domain}
        if self.path is not None:
            out["path"] = self.path
        if self.tags:
            out["tags"] = list(self.tags)
        if self.version is not None:
            out["version"] = self.version
        if self.transform is not None:
            out["transform"] = {"name": self.transform[0], "version": self.transform[1]}
        return out

    @property
    def transform_label(self) -> str | None:
        return f"{self.transform[0]}:{self.transform[1]}" if self.transform else None


@dataclass(frozen=True, slots=True)
class TrainsetRequest:
    """The ``trainset-requests`` message; see the README's "Training sets and lineage" section."""

    name: str
    version: str
    sources: tuple[TrainsetSource, ...]
    classes: tuple[str, ...] | None
    split: tuple[tuple[str, int], ...]
    dedupe: Dedupe | None = None
    where: str | None = None  # canonical (corpus.domain.where.canonical)

    def _options(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.dedupe is not None:
            body["dedupe"] = self.dedupe.value
        if self.where is not None:
            body["where"] = self.where
        return body

    def definition(self) -> str:
        """The canonical definition: compact JSON, independent of how the request was written."""
        body: dict[str, Any] = {
            "sources": [s.to_json() for s in self.sources],
            "labels": {"classes": list(self.classes)} if self.classes is not None else None,
            "split": dict(self.split),
        }
        return json.dumps(self._options(body), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "trainset": {"name": self.name, "version": self.version},
            "sources": [s.to_json() for s in self.sources],
            "split": dict(self.split),
        }
        if self.classes is not None:
            body["labels"] = {"classes": list(self.classes)}
        return json.dumps(self._options(body), ensure_ascii=False)

    @classmethod
    def from_definition(cls, name: str, version: str, definition: str) -> TrainsetRequest:
        """The request a stored definition came from (its canonical form)."""
        body = json.loads(definition)
        msg = {"trainset": {"name": name, "version": version}, "sources": body["sources"], "split": body["split"]}
        if body.get("labels") is not None:
            msg["labels"] = body["labels"]
        for option in ("dedupe", "where"):
            if option in body:
                msg[option] = body[option]
        return cls.parse(json.dumps(msg))

    @classmethod
    def parse(cls, body: bytes | str) -> TrainsetRequest:
        f = Fields(decode_body(body), "trainset request")
        ts = Fields(f.any("trainset", dict), "trainset request 'trainset'")
        raw_sources = f.any("sources", list)
        labels = f.any("labels", dict, required=False)
        raw_split = f.any("split", dict, required=False)
        raw_dedupe = f.str("dedupe", required=False)
        raw_where = f.str("where", required=False)
        f.done()
        name, version = ts.str("name"), ts.str("version")
        ts.done()
        try:
            validate_version(name, "training set name")
            validate_version(version, "training set version")
        except InvalidNameError as exc:
            raise MessageError(f"trainset request: {exc}") from exc
        if not raw_sources:
            raise MessageError("trainset request: 'sources' must list at least one source")
        if len(raw_sources) > MAX_SOURCES:
            raise MessageError(f"trainset request: at most {MAX_SOURCES} sources")
        parsed = {_parse_source(s, i) for i, s in enumerate(raw_sources)}
        sources = tuple(sorted(parsed, key=lambda s: json.dumps(s.to_json(), sort_keys=True)))
        classes: tuple[str, ...] | None = None
        if labels is not None:
            lf = Fields(labels, "trainset request 'labels'")
            raw_classes = lf.any("classes", list)
            lf.done()
            if not raw_classes or not all(isinstance(c, str) and normalize_tag(c) for c in raw_classes):
                raise MessageError("trainset request: 'labels.classes' must be a non-empty list of non-empty strings")
            if len(raw_classes) > MAX_CLASSES:
                raise MessageError(f"trainset request: at most {MAX_CLASSES} classes")
            classes = tuple(normalize_tag(c) for c in raw_classes)
            if len(set(classes)) != len(classes):
                raise MessageError("trainset request: 'labels.classes' names a class twice (classes compare case-insensitively)")
        split = parse_split(raw_split if raw_split is not None else DEFAULT_SPLIT)
        dedupe: Dedupe | None = None
        if raw_dedupe is not None:
            if raw_dedupe not in (d.value for d in Dedupe):
                raise MessageError(f"trainset request: 'dedupe' must be one of {[d.value for d in Dedupe]}, not {raw_dedupe!r}")
            dedupe = Dedupe(raw_dedupe)
        where = canonical_where(raw_where) if raw_where is not None else None
        req = cls(name, version, sources, classes, split, dedupe, where)
        size = len(req.definition().encode("utf-16-le", "surrogatepass")) // 2  # Azure counts UTF-16 code units
        if size > MAX_DEFINITION_CHARS:
            raise MessageError(f"trainset request: definition is {size} characters, more than {MAX_DEFINITION_CHARS}")
        message = len(req.to_json().encode("utf-8"))
        if message > MAX_REQUEST_BYTES:
            raise MessageError(f"trainset request: the message is {message} bytes, more than {MAX_REQUEST_BYTES}")
        return req


def _parse_source(raw: Any, index: int) -> TrainsetSource:
    where = f"trainset request 'sources[{index}]'"
    s = Fields(raw, where)
    domain = s.str("domain")
    path = s.str("path", required=False)
    version = s.str("version", required=False)
    tags = s.any("tags", list, required=False, default=[])
    transform = s.any("transform", dict, required=False)
    s.done()
    tname = tversion = None
    if transform is not None:
        t = Fields(transform, where + " 'transform'")
        tname, tversion = t.str("name"), t.str("version")
        t.done()
    try:
        validate_domain(domain)
        if version is not None:
            validate_version(version)
        if tname is not None and tversion is not None:
            validate_version(tname, "transform name")
            validate_version(tversion, "transform version")
    except InvalidNameError as exc:
        raise MessageError(f"{where}: {exc}") from exc
    if not all(isinstance(tag, str) and tag.strip() for tag in tags):
        raise MessageError(f"{where}: 'tags' must be a list of non-empty strings")
    if (path is None) == (not tags):
        raise MessageError(f"{where}: needs exactly one of 'path' (with 'version') or 'tags'")
    if path is not None:
        if version is None:
            raise MessageError(f"{where}: 'path' needs 'version'")
        if path != ROOT_PATH and any(seg in ("", ".", "..") for seg in path.split("/")):
            raise MessageError(f"{where}: 'path' {path!r} has an empty, '.' or '..' segment")
    norm = tuple(sorted(normalize(tags)))
    return TrainsetSource(domain, path, version, norm, (tname, tversion) if tname and tversion else None)


def parse_split(raw: Any) -> tuple[tuple[str, int], ...]:
    """``{"train": 80, "val": 10, "test": 10}`` → sorted ((test, 10), (train, 80), (val, 10)); sums to 100."""
    if not isinstance(raw, dict) or not raw:
        raise MessageError("trainset request: 'split' must be a non-empty object of name → percentage")
    items: list[tuple[str, int]] = []
    for name, pct in raw.items():
        if not isinstance(name, str) or not _SPLIT_NAME.match(name):
            raise MessageError(f"trainset request: split name {name!r} must be 1-32 of letters, digits, '_' or '-'")
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 < pct <= 100:
            raise MessageError(f"trainset request: split {name!r} must be an integer percentage 1-100")
        items.append((name, pct))
    if sum(p for _, p in items) != 100:
        raise MessageError(f"trainset request: split percentages sum to {sum(p for _, p in items)}, not 100")
    return tuple(sorted(items))


def parse_split_arg(text: str) -> dict[str, int]:
    """The CLI's ``--split 80/10/10`` (train/val/test) or ``80/20`` (train/val) or ``train=70,val=30``."""
    if "=" in text:
        out: dict[str, int] = {}
        for part in text.split(","):
            name, _, pct = part.partition("=")
            if not pct.strip().isdigit():
                raise MessageError(f"--split {text!r}: {part!r} is not NAME=PERCENT")
            out[name.strip()] = int(pct)
        return out
    parts = text.split("/")
    names = {1: ["train"], 2: ["train", "val"], 3: ["train", "val", "test"]}.get(len(parts))
    if names is None or not all(p.strip().isdigit() for p in parts):
        raise MessageError(f"--split {text!r}: expected TRAIN/VAL[/TEST] percentages or NAME=PERCENT,…")
    return {n: int(p) for n, p in zip(names, parts, strict=True) if int(p) > 0}


def bucket_of(md5_hex: str) -> int:
    """0..99 from the image's source original's MD5 (hex): SHA-256 of the 16 MD5 bytes, mod 100."""
    digest = hashlib.sha256(bytes.fromhex(md5_hex)).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def split_md5(source_md5_hex: str, cluster_md5_hex: str | None) -> str:
    """The MD5 (hex) that decides an image's split: its source original's duplicate cluster's,
    or, for an original without facts yet, its own (the rule before clusters)."""
    return cluster_md5_hex or source_md5_hex


def moved(source_md5_hex: str, cluster_md5_hex: str | None, split: tuple[tuple[str, int], ...]) -> bool:
    """Did the cluster rule put this image in another split than its own MD5 would have?"""
    return assign_split(split_md5(source_md5_hex, cluster_md5_hex), split) != assign_split(source_md5_hex, split)


def assign_split(md5_hex: str, split: tuple[tuple[str, int], ...]) -> str:
    """The split whose bucket range holds :func:`bucket_of` (ranges in sorted name order)."""
    bucket = bucket_of(md5_hex)
    upper = 0
    for name, pct in split:
        upper += pct
        if bucket < upper:
            return name
    raise ValueError("split percentages do not sum to 100")


class LabelOutcome(StrEnum):
    OK = "ok"
    NO_CLASS = "no-class"
    SEVERAL_CLASSES = "several-classes"
    DUPLICATE = "duplicate"
    FILTERED = "where"


def dedupe_key(mode: Dedupe | None, sha256: str | None, cluster: str | None) -> str | None:
    """What ``dedupe`` keeps one image of: the content (``exact``) or the cluster (``near``);
    None when the image has no facts yet (kept: it can't be compared) or there is no dedupe."""
    if mode is None or not sha256:
        return None
    return sha256 if mode is Dedupe.EXACT else (cluster or sha256)


def assign_labels(set_tags: tuple[str, ...], classes: tuple[str, ...] | None) -> tuple[LabelOutcome, tuple[str, ...]]:
    """Labels of an image from its set's tags.

    Without classes, the set's tags (normalised). With classes, the single class among the set's
    tags: ``(OK, (cls,))``; none matching or several matching are outcomes of their own, with the
    matching classes, so the caller can report them rather than drop or guess.
    """
    tags = tuple(normalize(set_tags))
    if classes is None:
        return LabelOutcome.OK, tags
    have = set(tags)
    found = tuple(c for c in classes if c in have)
    if len(found) == 1:
        return LabelOutcome.OK, found
    return (LabelOutcome.NO_CLASS if not found else LabelOutcome.SEVERAL_CLASSES), found


@dataclass(frozen=True, slots=True)
class TrainsetContinue:
    """A build continues in a new message when its time budget runs out; the state is in the row."""

    name: str
    version: str
    step: int

    KIND = "trainset-continue"

    def to_json(self) -> str:
        body = {"kind": self.KIND, "v": 1, "name": self.name, "version": self.version, "step": self.step}
        return json.dumps(body, ensure_ascii=False, sort_keys=True)


def parse_trainset_message(body: bytes | str) -> TrainsetRequest | TrainsetContinue:
    """A user's request, or the build's own continuation (``kind: trainset-continue``)."""
    obj = decode_body(body)
    if obj.get("kind") != TrainsetContinue.KIND:
        return TrainsetRequest.parse(body)
    f = Fields(obj, "trainset continuation")
    f.str("kind")
    if f.int("v") != 1:
        raise MessageError("trainset continuation: unsupported schema version")
    msg = TrainsetContinue(f.str("name"), f.str("version"), f.int("step"))
    f.done()
    return msg


# -- attempts: a failed build requested again is built afresh ------------------------------------

MANIFEST_BLOCK_PREFIX = "manifest"


def block_prefix(attempt: int) -> str:
    """The Put Block id prefix of an attempt's manifest blocks (:func:`corpus.domain.manifest.block_id`).

    Attempt 0 keeps the ids every build used before attempts existed (``manifest``); attempt
    ``n`` > 0 uses ``m`` + ``n`` in 7 digits: the same 8 characters, as every block id of one blob
    must have one length, and never an id of another attempt. So a delivery of a failed attempt
    still running after the rebuild started can't put its block under an id the rebuild commits.
    """
    if attempt == 0:
        return MANIFEST_BLOCK_PREFIX
    if not 0 < attempt < 10**7:
        raise ValueError(f"attempt {attempt} is out of range 0..9999999")
    return f"m{attempt:07d}"


ATTEMPT_MANIFEST = re.compile(r"[^/]+/[^/]+/attempt-([1-9][0-9]{0,6})/" + re.escape(MANIFEST_NAME))
"""The whole name of an attempt's blob (``fullmatch``): a *version* may be ``attempt-3``, whose
first attempt's blob ``<name>/attempt-3/manifest.jsonl.gz`` is not attempt 3's (review 27x)."""


def attempt_manifest_blob(name: str, version: str, attempt: int) -> str:
    """The manifest blob an attempt writes: attempt 0 the contract's ``<name>/<version>/manifest.jsonl.gz``
    (every build before attempts existed), attempt ``n`` > 0 ``<name>/<version>/attempt-<n>/manifest.jsonl.gz``.

    No two attempts share a blob (review 27): Put Block List discards every uncommitted block of
    its blob that it does not name, so a delivery of a failed attempt committing its blocks to the
    blob a rebuild is staging took the rebuild's blocks away, and the rebuild's commit then failed
    on every retry. Names and versions hold no ``/``, so no other training set's blob is one of
    these. Where a set's manifest is, is the row's ``ManifestBlob``; every reader reads that."""
    if attempt == 0:
        return manifest_blob(name, version)
    block_prefix(attempt)  # the same bound
    return f"{name}/{version}/attempt-{attempt}/{MANIFEST_NAME}"


def manifest_attempt(blob: str) -> int:
    """The attempt :func:`attempt_manifest_blob` named ``blob`` for (0 for any other name): the
    row's ``ManifestBlob``, which code older than attempts rewrites unchanged, still says which
    attempt the row is when such code dropped its ``Attempt``."""
    found = ATTEMPT_MANIFEST.fullmatch(blob)
    return int(found.group(1)) if found else 0


def attempt_owner(name: str, version: str, attempt: int) -> tuple[str, str]:
    """The (name, version) an attempt's ``--dedupe`` claims are filed under: the training set's
    own for attempt 0 (as before attempts existed), ``version~n`` for attempt ``n`` > 0. ``~`` is
    in no valid version, so no training set's claims meet another's, nor an attempt's another
    attempt's: a rebuild claims afresh, never losing a key to a copy the failed attempt kept."""
    return (name, version) if attempt == 0 else (name, f"{version}~{attempt}")
