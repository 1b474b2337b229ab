"""Test helper: a training set's manifest written straight from the Images records.

The training-sets builder (another issue) writes manifests in production; these tests only need
the contract (:mod:`corpus.domain.manifest`), so the manifest is built here from what ``corpus
host`` really ingested: same container, blob, MD5, size and dimensions as the stored images.
"""

from __future__ import annotations

import hashlib

from corpus.domain.manifest import ManifestEntry, hex_to_b64, manifest_blob, write_manifest
from corpus.domain.paths import SetRef


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
    container = rt.clients.container(rt.settings.trainsets_container)
    try:
        container.create_container()
    except Exception:
        pass
    container.upload_blob(manifest_blob(name, version), write_manifest(entries), overwrite=True)
