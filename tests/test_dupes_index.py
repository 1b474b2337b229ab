"""The duplicate index on a real (private) Azurite: exact copies, near duplicates, redelivery, races."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from corpus.app.dupes import MemberFilter, dupes_lines, index_original
from corpus.app.runtime import Runtime
from corpus.domain.facts import ImageFacts
from corpus.domain.images import inspect
from tests.photolike import jpeg_of, variant

DOMAIN = "birds"


def facts(data: bytes) -> ImageFacts:
    f = inspect(data).facts
    assert f is not None
    return f


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_clusters_exact_and_near_and_redelivery_changes_nothing(rt: Runtime) -> None:
    dupes = rt.catalog.dupes
    a, other = jpeg_of(1), jpeg_of(2)
    b = variant(a, "reencode", 3)

    def index(blob: str, data: bytes) -> str:
        return index_original(dupes, DOMAIN, blob, md5(data), facts(data)).id

    ca = index("original/a/v1/a.jpg", a)
    assert ca == facts(a).sha256
    assert list(dupes_lines(dupes, DOMAIN, near=True)) == []  # a single image is no cluster
    assert index("original/copies/v1/a.jpg", a) == ca  # exact copy
    assert index("original/reenc/v1/a.jpg", b) == ca  # near duplicate
    c_other = index("original/a/v1/other.jpg", other)
    assert c_other != ca
    rows_before = sorted(e["RowKey"] for e in dupes.table.list_entities())
    assert index("original/reenc/v1/a.jpg", b) == ca  # delivered again
    assert sorted(e["RowKey"] for e in dupes.table.list_entities()) == rows_before

    exact = list(dupes_lines(dupes, DOMAIN, near=False))
    assert [sorted(m["blob"] for m in line["members"]) for line in exact] == [  # type: ignore[attr-defined]
        ["original/a/v1/a.jpg", "original/copies/v1/a.jpg"]
    ]
    near = list(dupes_lines(dupes, DOMAIN, near=True))
    assert len(near) == 1 and near[0]["kind"] == "near"
    assert sorted(m["blob"] for m in near[0]["members"]) == [  # type: ignore[attr-defined]
        "original/a/v1/a.jpg",
        "original/copies/v1/a.jpg",
        "original/reenc/v1/a.jpg",
    ]
    only = list(dupes_lines(dupes, DOMAIN, near=True, keep=MemberFilter(tags=("reenc",)), set_tags=lambda ref: ref.dirs))
    assert [[m["blob"] for m in line["members"]] for line in only] == []  # type: ignore[attr-defined]
    v1 = list(dupes_lines(dupes, DOMAIN, near=True, keep=MemberFilter(version="v1")))
    assert v1 == near


def test_an_original_and_its_variants_indexed_at_once_end_in_one_cluster(rt: Runtime) -> None:
    dupes = rt.catalog.dupes

    def index(blob: str, data: bytes) -> str:
        return index_original(dupes, DOMAIN, blob, md5(data), facts(data)).id

    for seed in range(3):
        a = jpeg_of(10 + seed)
        group = [a, *(variant(a, kind, seed) for kind in ("reencode", "half", "png", "darker"))]
        blobs = [f"original/s{seed}/v1/{i}.jpg" for i in range(len(group))]
        with ThreadPoolExecutor(len(group)) as pool:
            clusters = list(pool.map(index, blobs, group))
        assert len(set(clusters)) == 1, clusters
