"""The duplicate index on a real (private) Azurite: exact copies, near duplicates, redelivery, races."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from corpus.app.dupes import MemberFilter, dupes_lines, index_original
from corpus.app.runtime import Runtime
from corpus.domain.imagefacts import ImageFacts
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


def test_backfill_fills_facts_and_clusters_once_and_resumes(rt: Runtime) -> None:
    from corpus.app.backfill import backfill_facts
    from corpus.domain.paths import SetRef
    from corpus.store.rows import ImageRow
    from tests.photolike import rotated_exif

    ref = SetRef(DOMAIN, ("old",), "v1")
    rt.catalog.sets.ensure(ref, ("old",), blob_prefix=ref.original_prefix())
    rt.ensure_container(DOMAIN)
    a = jpeg_of(30)
    files = {
        "a.jpg": a,
        "copy.jpg": a,
        "near.jpg": variant(a, "half", 1),
        "other.jpg": jpeg_of(31),
        "turned.jpg": rotated_exif(32, (96, 64)),
    }
    for name, data in files.items():
        blob = ref.original_prefix() + name
        rt.blobs.put(DOMAIN, blob, data, "image/jpeg")
        stored = (64, 96) if name == "turned.jpg" else (1, 1)  # as recorded before facts: the stored size
        rt.catalog.images.record(ref, ImageRow(name, blob, len(data), md5(data), "image/jpeg", *stored, source=f"x/{name}"))

    def read(container: str, blob: str) -> bytes:
        return rt.blobs.read(container, blob).data

    first = list(backfill_facts(rt.catalog, read, rt.settings.max_pixels, DOMAIN, page=2))
    assert first[-1].filled == 5 and first[-1].failed == 0
    rows = {r.file: r for r in rt.catalog.images.iter(ref)}
    assert all(r.facts is not None and r.cluster is not None for r in rows.values())
    assert rows["a.jpg"].cluster == rows["copy.jpg"].cluster == rows["near.jpg"].cluster != rows["other.jpg"].cluster
    assert (rows["turned.jpg"].width, rows["turned.jpg"].height) == (96, 64)  # fixed: as displayed
    again = list(backfill_facts(rt.catalog, read, rt.settings.max_pixels, DOMAIN))
    assert again[-1].filled == 0 and again[-1].skipped == 5
    assert {r.file: r for r in rt.catalog.images.iter(ref)} == rows


def test_flat_pictures_of_different_colours_are_not_near_duplicates(rt: Runtime) -> None:
    from tests.support import photo

    dupes = rt.catalog.dupes
    red, blue = photo(1), photo(2)
    clusters = {
        index_original(dupes, DOMAIN, f"original/flat/v1/{i}.jpg", md5(x), facts(x)).id for i, x in enumerate((red, blue))
    }
    assert len(clusters) == 2
    assert index_original(dupes, DOMAIN, "original/flat/v2/0.jpg", md5(red), facts(red)).id == facts(red).sha256  # exact copy
    assert [len(line["members"]) for line in dupes_lines(dupes, DOMAIN, near=True)] == [2]  # type: ignore[arg-type]


def test_the_index_runs_on_the_in_memory_store_too() -> None:
    """The same use case on Runtime.in_memory (corpus.store.memory_tables): same clusters, no Azurite."""
    mem = Runtime.in_memory()
    mem.ensure_resources()
    dupes = mem.catalog.dupes
    a = jpeg_of(50)
    group = [a, a, variant(a, "half", 2), jpeg_of(51)]
    got = [index_original(dupes, DOMAIN, f"original/m/v1/{i}.jpg", md5(x), facts(x)).id for i, x in enumerate(group)]
    assert got[0] == got[1] == got[2] != got[3]
    assert [len(line["members"]) for line in dupes_lines(dupes, DOMAIN, near=True)] == [3]  # type: ignore[arg-type]


def test_the_band_reads_are_in_flight_together() -> None:
    """The 4 band ranges are read concurrently (latency of one read, not four): each read waits at
    a barrier for the others, which only a concurrent caller passes (a sequential one breaks it at
    its deadline). Same neighbours found as without the barrier."""
    import threading

    from corpus.domain import dupindex as d
    from corpus.store.dupes_table import DupesTable

    mem = Runtime.in_memory()
    mem.ensure_resources()
    dupes = mem.catalog.dupes
    a = jpeg_of(60)
    index_original(dupes, DOMAIN, "original/m/v1/a.jpg", md5(a), facts(a))
    barrier = threading.Barrier(d.BANDS, timeout=30)

    class Gated:
        def __init__(self, table: object) -> None:
            self.table = table

        def query_entities(self, query_filter: str, *args: object, **kw: object) -> object:
            if "RowKey ge" in query_filter:  # a band range (content rows are read by key)
                barrier.wait()
            return self.table.query_entities(query_filter, *args, **kw)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.table, name)

    b = variant(a, "half", 3)
    found = DupesTable(Gated(dupes.table)).neighbours(DOMAIN, facts(b))
    assert [n.sha256 for n, _ in found] == [facts(a).sha256]
    assert found[0][1] is not None and found[0][1].blob == "original/m/v1/a.jpg"


def test_a_near_duplicate_writes_its_cluster_and_members_in_one_transaction() -> None:
    """An original with a near duplicate: 1 band transaction, 4 band reads, 1 neighbour read and
    one transaction for its content row *and* its member rows (7 requests, not 8)."""
    from corpus.domain import dupindex as d

    mem = Runtime.in_memory()
    mem.ensure_resources()
    dupes = mem.catalog.dupes
    a = jpeg_of(70)
    b = variant(a, "half", 4)
    index_original(dupes, DOMAIN, "original/m/v1/a.jpg", md5(a), facts(a))
    pk = d.partition(DOMAIN)
    before = dupes.table.calls[pk]  # HTTP requests (a transaction: one)
    cluster = index_original(dupes, DOMAIN, "original/m/v1/b.jpg", md5(b), facts(b))
    assert dupes.table.calls[pk] - before == 7
    assert {m.blob for m in dupes.members(DOMAIN, cluster.id)} == {"original/m/v1/a.jpg", "original/m/v1/b.jpg"}


def test_a_losing_decision_writes_none_of_its_members() -> None:
    """Two deliveries decide at once: the transaction of the one that loses (its content row
    exists) writes nothing, and it returns the decision that stands."""
    from corpus.domain import dupindex as d
    from corpus.store.dupes_table import Content

    mem = Runtime.in_memory()
    mem.ensure_resources()
    dupes = mem.catalog.dupes
    sha, other = "a" * 64, "b" * 64
    first = Content(sha, d.Cluster(sha, "m1"), DOMAIN, "original/m/v1/x.jpg", "0" * 16)
    assert dupes.decide(DOMAIN, first) is first
    losing = Content(sha, d.Cluster(other, "m2"), DOMAIN, "original/m/v1/y.jpg", "0" * 16)
    members = [d.Member(other, DOMAIN, "original/m/v1/y.jpg", sha, 0), d.Member(other, DOMAIN, "original/m/v1/z.jpg", other, 1)]
    stands = dupes.decide(DOMAIN, losing, members)
    assert stands.cluster.id == sha and stands.blob == "original/m/v1/x.jpg"
    assert list(dupes.members(DOMAIN)) == []


def test_the_content_that_wrote_first_but_read_before_the_other_wrote_is_waited_for() -> None:
    """Issue 19, the exact interleaving, step by step: X (the larger SHA-256) writes its band rows
    and reads its neighbours before Y has written (it sees nothing); Y then writes, reads, and sees
    X undecided. Y must wait for X (X wrote first) rather than pass it over for its larger SHA-256
    and found a second cluster; X decides alone; Y then joins X's cluster."""
    import threading

    from corpus.store.dupes_table import DupesTable

    mem = Runtime.in_memory()
    mem.ensure_resources()
    table = mem.catalog.dupes.table
    a = jpeg_of(80)
    b = variant(a, "half", 5)
    (y, y_data), (x, x_data) = sorted([(facts(a), a), (facts(b), b)], key=lambda p: p[0].sha256)
    x_at_decide, y_has_read = threading.Event(), threading.Event()

    class GateX:
        """X's table: X's decision (its content row) waits until Y has read X's content row."""

        def __init__(self, table: object) -> None:
            self.table = table

        def create_entity(self, entity: dict[str, object]) -> object:
            x_at_decide.set()
            assert y_has_read.wait(30)
            return self.table.create_entity(entity)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.table, name)

    class GateY:
        """Y's table: note when Y has read X's content row (X still undecided then)."""

        def __init__(self, table: object) -> None:
            self.table = table

        def query_entities(self, query_filter: str, *args: object, **kw: object) -> object:
            try:
                return list(self.table.query_entities(query_filter, *args, **kw))  # type: ignore[attr-defined]
            finally:
                if "RowKey eq" in query_filter:  # a content row read by key (band ranges are ranges)
                    y_has_read.set()

        def __getattr__(self, name: str) -> object:
            return getattr(self.table, name)

    with ThreadPoolExecutor(1) as pool:
        x_cluster = pool.submit(index_original, DupesTable(GateX(table)), DOMAIN, "original/m/v1/x.jpg", md5(x_data), x)
        assert x_at_decide.wait(30)  # X wrote its bands and read its neighbours: none yet
        y_cluster = index_original(DupesTable(GateY(table)), DOMAIN, "original/m/v1/y.jpg", md5(y_data), y)
        assert x_cluster.result(30).id == x.sha256
    assert y_cluster.id == x.sha256
    assert {m.blob for m in mem.catalog.dupes.members(DOMAIN, x.sha256)} == {"original/m/v1/x.jpg", "original/m/v1/y.jpg"}


def test_backfill_refuses_bytes_that_do_not_match_the_recorded_md5(rt: Runtime) -> None:
    """A blob changed since it was recorded gets no facts (they would describe other bytes): counted as failed."""
    from corpus.app.backfill import backfill_facts
    from corpus.domain.paths import SetRef
    from corpus.store.rows import ImageRow

    ref = SetRef(DOMAIN, ("swapped",), "v1")
    rt.catalog.sets.ensure(ref, ("swapped",), blob_prefix=ref.original_prefix())
    rt.ensure_container(DOMAIN)
    good, recorded, stored = jpeg_of(40), jpeg_of(41), jpeg_of(42)
    rt.blobs.put(DOMAIN, ref.original_prefix() + "good.jpg", good, "image/jpeg")
    rt.blobs.put(DOMAIN, ref.original_prefix() + "bad.jpg", stored, "image/jpeg")  # not the recorded bytes
    rt.catalog.images.record(
        ref,
        ImageRow("good.jpg", ref.original_prefix() + "good.jpg", len(good), md5(good), "image/jpeg", 1, 1, source="x/good.jpg"),
    )
    rt.catalog.images.record(
        ref,
        ImageRow(
            "bad.jpg", ref.original_prefix() + "bad.jpg", len(recorded), md5(recorded), "image/jpeg", 1, 1, source="x/bad.jpg"
        ),
    )

    def read(container: str, blob: str) -> bytes:
        return rt.blobs.read(container, blob).data

    last = list(backfill_facts(rt.catalog, read, rt.settings.max_pixels, DOMAIN))[-1]
    assert (last.filled, last.failed) == (1, 1)
    assert "bad.jpg" in last.examples[0] and "MD5" in last.examples[0]
    rows = {r.file: r for r in rt.catalog.images.iter(ref)}
    assert rows["good.jpg"].facts is not None
    assert rows["bad.jpg"].facts is None and rows["bad.jpg"].cluster is None
