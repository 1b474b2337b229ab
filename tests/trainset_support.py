"""Test helper: a training set's manifest written straight from the Images records.

The training-sets builder writes manifests in production (tests/test_trainset_dataout_e2e.py reads
a real one); these tests only need the contract (:mod:`corpus.domain.manifest`), so the manifest is
built here from what ``corpus host`` really ingested (same container, blob, MD5, size and
dimensions as the stored images), with a ``ready`` TrainingSets row beside it.
"""

from __future__ import annotations

import gzip
import hashlib

from corpus.domain.manifest import ManifestEntry, hex_to_b64, manifest_blob, write_manifest
from corpus.domain.paths import SetRef
from corpus.store.settings import TABLE_TRAINSETS
from corpus.store.trainsets_table import READY, BuildState, TrainsetRow, TrainsetStore


def split_of(md5_hex: str, splits: tuple[str, ...] = ("train", "train", "val", "test")) -> str:
    return splits[int(hashlib.sha256(md5_hex.encode()).hexdigest(), 16) % len(splits)]


def manifest_entries(rt, sets: list[tuple[SetRef, list[str]]], transform: tuple[str, str] | None = None) -> list[ManifestEntry]:
    """Entries for every image of each (set, labels), split by a hash of its MD5."""
    out = []
    for ref, labels in sets:
        for img in rt.catalog.images.iter(ref, transform):
            md5 = hex_to_b64(img.md5)
            out.append(
                ManifestEntry(
                    container=ref.domain, blob=img.blob, md5=md5, size=img.size, width=img.width, height=img.height,
                    domain=ref.domain, path=ref.path, version=ref.version, transform=transform,
                    source_blob=img.blob if transform is None else img.source, source_md5=md5 if transform is None else "",
                    labels=tuple(labels), split=split_of(img.md5),
                )
            )  # fmt: skip
    return sorted(out, key=lambda e: e.sort_key)


def write_trainset(rt, name: str, version: str, entries: list[ManifestEntry]) -> None:
    publish_ready(rt.clients, rt.settings.trainsets_container, name, version, entries)


def publish_ready(clients, container: str, name: str, version: str, entries: list[ManifestEntry]) -> None:
    """The manifest blob and a ``ready`` TrainingSets row for it (readers refuse a set that is not ready)."""
    clients.ensure(containers=(container,), tables=(TABLE_TRAINSETS,))
    data = write_manifest(entries)
    clients.container(container).upload_blob(manifest_blob(name, version), data, overwrite=True)
    row = TrainsetRow(
        name, version, '{"test":"trainset_support"}', status=READY, manifest_container=container,
        manifest_blob=manifest_blob(name, version), sha256=hashlib.sha256(gzip.decompress(data)).hexdigest(),
        state=BuildState(images=len(entries)),
    )  # fmt: skip
    TrainsetStore(clients).trainsets.create(row)
