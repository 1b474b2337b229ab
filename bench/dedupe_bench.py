"""Near-duplicate detection: recall, precision, added CPU per image, and cost as the corpus grows.

Generates ``--originals`` distinct photo-like pictures (tests/photolike.py: gradients, shapes, blur,
noise) and, for each, the five variants the dedupe issue names (JPEG re-encode at quality 50-90,
half size, PNG, +10 % and -10 % brightness). Every image goes through ingest's own decode with
facts (:func:`corpus.domain.images.inspect`), then arrives, in a shuffled order, at the band index
of :mod:`corpus.domain.dupindex` (held in a dict here: partition → rows, as the table holds them),
which finds its near duplicates and picks its cluster exactly as ingest does. Arrivals are one
at a time, so every neighbour found has decided its cluster and the concurrency rule (wait for the
undecided neighbour whose band rows were written first) never fires here: it does not change
recall or precision, only who decides first under a race. That rule is tested by replaying
interleavings (the hypothesis properties in tests/test_dupindex.py).

* **Quality**: pair recall and precision (a true pair = two images of one original's group), per
  variant kind, and cluster recall (a variant in its original's cluster) and purity.
* **Added CPU**: process time of the decode with facts minus the decode without, per image, on
  the generated pictures and on a few 12-megapixel JPEGs.
* **Growth**: at corpus sizes 1k → 10k, our per-arriving-image cost (band rows read, time) beside a
  batch all-pairs pHash scan (numpy, XOR + popcount, chunked), the method of imagededup's
  brute-force search, which is what a batch tool must redo when the corpus grows (imagededup
  itself needs torchvision, which would pull a CUDA torch here, so it is not installed).

    PYTHONPATH=. .venv/bin/python bench/dedupe_bench.py --originals 2000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from corpus.domain import dupindex as d  # noqa: E402
from corpus.domain.imagefacts import ImageFacts  # noqa: E402
from corpus.domain.images import inspect  # noqa: E402
from tests.photolike import VARIANTS, encode, picture, variant  # noqa: E402

SIZES = ((320, 240), (400, 300), (240, 320), (360, 240))


def generate(originals: int) -> list[tuple[int, str, bytes]]:
    """(group, kind, bytes): each original and its variants."""
    out: list[tuple[int, str, bytes]] = []
    for seed in range(originals):
        rnd = random.Random(seed)
        orig = encode(picture(seed, SIZES[seed % len(SIZES)]), "JPEG", rnd.randint(80, 95))
        out.append((seed, "original", orig))
        for kind in VARIANTS:
            out.append((seed, kind, variant(orig, kind, seed)))
    return out


def cpu_of(images: list[bytes], facts: bool) -> float:
    start = time.process_time()
    for data in images:
        inspect(data, facts=facts)
    return time.process_time() - start


def added_cpu(images: list[bytes]) -> dict[str, float]:
    """Median over 3 rounds of (decode with facts - decode alone), ms per image."""
    inspect(images[0])  # imports (scipy) out of the way
    base = sorted(cpu_of(images, False) for _ in range(3))[1]
    with_facts = sorted(cpu_of(images, True) for _ in range(3))[1]
    n = len(images)
    return {"decode_ms": 1000 * base / n, "with_facts_ms": 1000 * with_facts / n, "added_ms": 1000 * (with_facts - base) / n}


class BandIndex:
    """The table's band partitions, in memory: partition → [(sha, phash, dhash, image)]."""

    def __init__(self) -> None:
        self.parts: dict[tuple[str, str], list[tuple[str, int, int, int]]] = defaultdict(list)
        self.cluster: dict[str, d.Cluster] = {}

    def arrive(self, i: int, f: ImageFacts) -> tuple[d.Cluster, list[int], int]:
        """Index image ``i``: its cluster, the images found near it, band rows read."""
        p, h = f.phash_int, f.dhash_int
        assert d.has_structure(f.contrast), "generated pictures are never flat"
        rows: list[d.Neighbour] = []
        found: list[int] = []
        read = 0
        for part in d.band_ranges(p):
            for sha, rp, rh, j in self.parts[part][: d.MAX_BAND_ROWS]:
                read += 1
                if sha != f.sha256 and d.is_near(p, h, rp, rh):
                    found.append(j)
                    rows.append(d.Neighbour(sha, sha[:32], rp, rh, self.cluster.get(sha)))
        found = sorted(set(found))
        if f.sha256 in self.cluster:
            cluster = self.cluster[f.sha256]
        else:
            cluster = d.choose_cluster(f.sha256, f.sha256[:32], d.candidates(p, h, rows, f.sha256))
            self.cluster[f.sha256] = cluster
        for part in d.band_ranges(p):
            self.parts[part].append((f.sha256, p, h, i))
        return cluster, found, read


def quality(groups: list[int], kinds: list[str], facts: list[ImageFacts], order: list[int]) -> dict[str, object]:
    index = BandIndex()
    detected: set[tuple[int, int]] = set()
    cluster_of: dict[int, d.Cluster] = {}
    reads: list[int] = []
    for i in order:
        cluster, found, read = index.arrive(i, facts[i])
        cluster_of[i] = cluster
        reads.append(read)
        detected.update((min(i, j), max(i, j)) for j in found)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    true_pairs = {(a, b) for ids in members.values() for a in ids for b in ids if a < b}
    tp = len(detected & true_pairs)
    per_kind: dict[str, float] = {}
    for kind in VARIANTS:
        pairs = [(min(ids[0], i), max(ids[0], i)) for ids in members.values() for i in ids if kinds[i] == kind]
        per_kind[kind] = sum(p in detected for p in pairs) / len(pairs)
    variants = [i for i, k in enumerate(kinds) if k != "original"]
    in_cluster = sum(cluster_of[i] == cluster_of[members[groups[i]][0]] for i in variants)
    clusters: dict[str, set[int]] = defaultdict(set)
    for i, c in cluster_of.items():
        clusters[c.id].add(groups[i])
    return {
        "images": len(facts),
        "true_pairs": len(true_pairs),
        "detected_pairs": len(detected),
        "pair_recall": tp / len(true_pairs),
        "pair_precision": tp / len(detected) if detected else 1.0,
        "recall_by_variant": per_kind,
        "cluster_recall": in_cluster / len(variants),
        "clusters_mixing_pictures": sum(len(gs) > 1 for gs in clusters.values()),
        "band_rows_read_mean": sum(reads) / len(reads),
        "band_rows_read_max": max(reads),
    }


def brute_force_pairs(phashes: np.ndarray[tuple[int], np.dtype[np.uint64]], chunk: int = 1024) -> int:
    """All pairs within NEAR_PHASH bits by an all-pairs scan (upper triangle, chunked)."""
    found = 0
    for start in range(0, len(phashes), chunk):
        block = phashes[start : start + chunk, None] ^ phashes[None, :]
        dist = np.bitwise_count(block)
        rows = np.arange(start, start + len(block))[:, None]
        found += int(np.count_nonzero((dist <= d.NEAR_PHASH) & (np.arange(len(phashes))[None, :] > rows)))
    return found


def growth(facts: list[ImageFacts], order: list[int], sizes: list[int], probe: int) -> list[dict[str, float]]:
    out = []
    for n in sizes:
        ids = order[:n]
        # ours: the index holds n - probe images; time the last ``probe`` arrivals (each one's whole cost)
        index = BandIndex()
        for i in ids[: n - probe]:
            index.arrive(i, facts[i])
        reads = 0
        start = time.perf_counter()
        for i in ids[n - probe :]:
            reads += index.arrive(i, facts[i])[2]
        ours_us = 1e6 * (time.perf_counter() - start) / probe
        # theirs: a batch all-pairs scan over the n images, and the time it costs per image
        hashes = np.array([facts[i].phash_int for i in ids], dtype=np.uint64)
        tracemalloc.start()
        start = time.perf_counter()
        pairs = brute_force_pairs(hashes)
        batch_s = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # and one arriving image checked against all n by a linear scan
        start = time.perf_counter()
        for i in ids[n - probe :]:
            np.count_nonzero(np.bitwise_count(hashes ^ np.uint64(facts[i].phash_int)) <= d.NEAR_PHASH)
        scan_us = 1e6 * (time.perf_counter() - start) / probe
        out.append(
            {
                "images": n,
                "ours_us_per_arrival": ours_us,
                "ours_band_rows_read_per_arrival": reads / probe,
                "batch_all_pairs_s": batch_s,
                "batch_peak_mib": peak / 2**20,
                "batch_pairs": pairs,
                "linear_scan_us_per_arrival": scan_us,
            }
        )
    return out


class WireCounter:
    """Counts HTTP requests on the wire (every SDK request goes through ``requests.Session.send``)."""

    def __init__(self) -> None:
        import requests

        self.n = 0
        original = requests.Session.send

        def send(session: Any, request: Any, **kwargs: Any) -> Any:
            self.n += 1
            return original(session, request, **kwargs)

        requests.Session.send = send  # type: ignore[method-assign]


def on_azurite(images: list[tuple[int, str, bytes]], facts: list[ImageFacts], n: int) -> dict[str, object]:
    """Requests on the wire per indexed original, and the backfill's rate and peak memory, on a
    private Azurite (tests.support.Azurite)."""
    import hashlib
    import tempfile

    from corpus.app.backfill import backfill_facts
    from corpus.app.dupes import index_original
    from corpus.app.runtime import Runtime
    from corpus.domain.paths import SetRef
    from corpus.store.rows import ImageRow
    from corpus.store.settings import Settings
    from tests.support import Azurite

    counter = WireCounter()
    with tempfile.TemporaryDirectory() as tmp:
        az = Azurite(Path(tmp)).start()
        try:
            rt = Runtime.create(Settings.from_env({"CorpusStorage": az.connection_string}))
            rt.ensure_resources()
            picked = list(range(min(n, len(images))))
            per: list[int] = []
            dup_per: list[int] = []
            start = time.perf_counter()
            for i in picked:
                group, kind, data = images[i]
                before = counter.n
                md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                index_original(rt.catalog.dupes, "bench", f"original/g{group}/v1/{kind}.jpg", md5, facts[i])
                (per if kind == "original" else dup_per).append(counter.n - before)
            index_s = time.perf_counter() - start

            ref = SetRef("bench", ("old",), "v1")
            rt.catalog.sets.ensure(ref, ("old",), blob_prefix=ref.original_prefix())
            rt.ensure_container("bench")
            for i in picked:
                _, _, data = images[i]
                blob = ref.original_prefix() + f"{i}.jpg"
                rt.blobs.put("bench", blob, data, "image/jpeg")
                md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                rt.catalog.images.record(ref, ImageRow(f"{i}.jpg", blob, len(data), md5, "image/jpeg", 1, 1, source="x"))

            def read(c: str, b: str) -> bytes:
                return rt.blobs.read(c, b).data

            tracemalloc.start()
            before = counter.n
            start = time.perf_counter()
            last = None
            for progress in backfill_facts(rt.catalog, read, rt.settings.max_pixels, "bench"):
                last = progress
            backfill_s = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert last is not None
        finally:
            az.stop()
    return {
        "images": len(picked),
        "requests_per_original_without_duplicates": sum(per) / max(1, len(per)),
        "requests_per_image_with_duplicates": sum(dup_per) / max(1, len(dup_per)),
        "index_s_per_image": index_s / len(picked),
        "backfill": {
            "filled": last.filled,
            "images_per_s": last.filled / backfill_s,
            "requests_per_image": (counter.n - before) / max(1, last.filled),
            "python_heap_peak_mib": peak / 2**20,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--originals", type=int, default=2000)
    ap.add_argument("--cpu-sample", type=int, default=300, help="images timed for the added CPU")
    ap.add_argument("--probe", type=int, default=500, help="arrivals timed at each corpus size")
    ap.add_argument("--azurite", type=int, default=300, help="images indexed and backfilled on a private Azurite (0: skip)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    t0 = time.perf_counter()
    images = generate(args.originals)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    facts = []
    for _, _, data in images:
        f = inspect(data).facts
        assert f is not None
        facts.append(f)
    facts_s = time.perf_counter() - t0
    groups, kinds = [g for g, _, _ in images], [k for _, k, _ in images]
    order = list(range(len(images)))
    random.Random(1).shuffle(order)

    sample = [data for _, _, data in images[: args.cpu_sample]]
    big = [encode(picture(seed, (4000, 3000)), "JPEG", 90) for seed in range(5)]
    report: dict[str, object] = {
        "command": " ".join(sys.argv),
        "load_average": os.getloadavg(),
        "generate_s": gen_s,
        "facts_s": facts_s,
        "thresholds": {"phash": d.NEAR_PHASH, "dhash": d.NEAR_DHASH, "bands": f"{d.BANDS}x{d.BAND_BITS}"},
        "added_cpu_generated": added_cpu(sample),
        "added_cpu_12mp": added_cpu(big),
        "quality": quality(groups, kinds, facts, order),
    }
    sizes = [n for n in (1000, 2000, 5000, 10000) if n <= len(images)]
    report["growth"] = growth(facts, order, sizes, min(args.probe, sizes[0] // 2)) if sizes else []
    if args.azurite:
        report["azurite"] = on_azurite(images, facts, args.azurite)
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
