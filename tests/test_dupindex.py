"""The duplicate index's pure rules: bands find every near pair; cluster choice; dupes lines."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain import dupindex as d

hashes = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def within(draw: st.DrawFn, threshold: int = d.NEAR_PHASH) -> tuple[int, int]:
    a = draw(hashes)
    bits = draw(st.sets(st.integers(0, 63), max_size=threshold))
    b = a
    for bit in bits:
        b ^= 1 << bit
    return a, b


@given(within())
def test_every_pair_within_the_threshold_shares_a_band(pair: tuple[int, int]) -> None:
    a, b = pair
    assert d.hamming(a, b) <= d.NEAR_PHASH
    assert d.share_band(a, b)
    assert set(d.band_ranges(a)) & set(d.band_ranges(b))


@given(st.lists(hashes, min_size=1, max_size=40), st.data())
def test_the_index_finds_exactly_the_brute_force_neighbours(stored: list[int], data: st.DataObject) -> None:
    """An in-memory band index (partition → hashes) answers like an all-pairs scan."""
    index: dict[tuple[str, str], set[int]] = {}
    for h in stored:
        for key in d.band_row_keys(f"{h:016x}", "sha"):
            found_in = [r for r in d.band_ranges(h) if r[0] <= key < r[1]]
            assert len(found_in) == 1
            index.setdefault(found_in[0], set()).add(h)
    base = data.draw(st.sampled_from(stored))
    query = base ^ sum(1 << b for b in data.draw(st.sets(st.integers(0, 63), max_size=d.NEAR_PHASH)))
    found = {h for r in d.band_ranges(query) for h in index.get(r, ()) if d.hamming(h, query) <= d.NEAR_PHASH}
    assert found == {h for h in stored if d.hamming(h, query) <= d.NEAR_PHASH}
    assert base in found


def test_four_bits_can_escape_every_band() -> None:
    a = 0
    b = sum(1 << (16 * i) for i in range(4))  # one bit in each band
    assert d.hamming(a, b) == 4 and not d.share_band(a, b)


def test_bands_and_keys() -> None:
    assert d.bands(0x0123456789ABCDEF) == (0x0123, 0x4567, 0x89AB, 0xCDEF)
    assert d.partition("cats") == "cats"
    assert d.band_row_keys("0123456789abcdef", "ff")[2] == "b2!89ab!0123456789abcdef!ff"
    lo, hi = d.band_range(2, 0x89AB)
    assert lo <= d.band_row_keys("0123456789abcdef", "ff")[2] < hi and not lo <= d.band_row_key(2, 0x89AC, "0", "f") < hi
    assert d.MEMBERS[0] <= d.member_row_key("aa", "bb", "cats", "x") < d.MEMBERS[1]
    assert not d.MEMBERS[0] <= d.content_row_key("aa") < d.MEMBERS[1]
    low, high = d.cluster_range("aa")
    key = d.member_row_key("aa", "bb", "cats", "original/a b/v1/x.jpg")
    assert low <= key < high and "/" not in key and " " not in key
    assert not (low <= d.member_row_key("aab", "bb", "cats", "x") < high)
    with pytest.raises(ValueError):
        d.hash_int("abc")


def n(sha: str, cluster: str | None = None, age: float = 0.0, written: datetime | None = None) -> d.Neighbour:
    return d.Neighbour(sha, "m" + sha, 0, 0, d.Cluster(cluster, "m" + cluster) if cluster else None, age, written)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(tick: int) -> datetime:
    return T0 + timedelta(milliseconds=tick)


def test_choose_cluster() -> None:
    assert d.choose_cluster("b", "mb", []) == d.Cluster("b", "mb")
    assert d.choose_cluster("a", "ma", [n("b", "z"), n("c", "y")]) == d.Cluster("y", "my")  # joins, never founds
    assert d.choose_cluster("a", "ma", [n("b")]) == d.Cluster("a", "ma")  # larger undecided: founds
    with pytest.raises(d.NotReady):
        d.choose_cluster("b", "mb", [n("a")])  # smaller undecided: waits
    assert d.choose_cluster("b", "mb", [n("a", age=d.STALE_SECONDS + 1)]) == d.Cluster("b", "mb")


def test_choose_cluster_waits_for_who_wrote_first_not_for_the_smaller_sha() -> None:
    """Issue 19: X ("b") wrote its bands first and read before Y ("a") wrote: X saw nobody and
    founds; Y sees X undecided and must wait for it (X wrote first), though its SHA-256 is smaller."""
    assert d.choose_cluster("b", "mb", [], written=at(1)) == d.Cluster("b", "mb")
    with pytest.raises(d.NotReady):
        d.choose_cluster("a", "ma", [n("b", written=at(1))], written=at(2))
    assert d.choose_cluster("a", "ma", [n("b", "b", written=at(1))], written=at(2)) == d.Cluster("b", "mb")
    # a later writer is passed over, whatever its SHA-256; same time: the smaller SHA-256 is first
    assert d.choose_cluster("b", "mb", [n("a", written=at(2))], written=at(1)) == d.Cluster("b", "mb")
    with pytest.raises(d.NotReady):
        d.choose_cluster("b", "mb", [n("a", written=at(1))], written=at(1))
    # own write time unknown (own band rows not read): the SHA-256 rule, as before
    assert d.choose_cluster("a", "ma", [n("b", written=at(1))]) == d.Cluster("a", "ma")
    assert d.choose_cluster("a", "ma", [n("b", written=at(1), age=d.STALE_SECONDS + 1)], written=at(2)) == d.Cluster("a", "ma")


@given(st.integers(2, 5), st.data())
def test_any_interleaving_of_write_read_decide_ends_in_one_cluster(count: int, data: st.DataObject) -> None:
    """Mutual near duplicates, each doing write bands → read neighbours → decide (retrying the
    read while not ready), their steps interleaved in any order, write times possibly tied (a
    coarse service clock; but a write after another's read has a later time): they all end in one
    cluster (the SHA-256 rule failed this, issue 19)."""
    shas = data.draw(st.lists(st.text("0123456789abcdef", min_size=4, max_size=4), min_size=count, max_size=count, unique=True))
    written: dict[str, datetime] = {}
    decided: dict[str, d.Cluster] = {}
    seen: dict[str, list[d.Neighbour]] = {}
    step = {sha: "write" for sha in shas}
    tick = 0
    for i in range(400):
        pending = [sha for sha in shas if sha not in decided]
        if not pending:
            break
        # an interleaving drawn for the first steps, then round robin (every worker keeps going)
        sha = data.draw(st.sampled_from(pending)) if i < 40 else pending[i % len(pending)]
        if i >= 40 or data.draw(st.booleans()):
            tick += 1  # else: the same service clock tick as the previous step (writes may tie)
        if step[sha] == "write":
            written[sha] = at(tick)
            step[sha] = "read"
        elif step[sha] == "read":
            seen[sha] = [n(o, decided[o].id if o in decided else None, written=written[o]) for o in written if o != sha]
            step[sha] = "decide"
            tick += 1  # a read's round trip spans a clock tick: a write after it has a later time
        else:
            try:
                decided[sha] = d.choose_cluster(sha, "m" + sha, seen[sha], written=written[sha])
            except d.NotReady:
                step[sha] = "read"
    assert set(decided) == set(shas)
    assert len({c.id for c in decided.values()}) == 1


@given(
    st.lists(st.text("0123456789abcdef", min_size=4, max_size=4), min_size=2, max_size=6, unique=True),
    st.lists(st.integers(0, 3), min_size=6, max_size=6),
    st.randoms(),
)
def test_simultaneous_mutual_neighbours_end_in_one_cluster(shas: list[str], times: list[int], rnd: object) -> None:
    """Images that all see each other undecided: whatever order they are retried in, one cluster,
    founded by the first to write its band rows (ties: the smaller SHA-256)."""
    import random

    assert isinstance(rnd, random.Random)
    ticks = dict(zip(shas, times, strict=False))
    decided: dict[str, d.Cluster] = {}
    pending = list(shas)
    while pending:
        sha = rnd.choice(pending)
        seen = [n(o, decided[o].id if o in decided else None, written=at(ticks[o])) for o in shas if o != sha]
        try:
            decided[sha] = d.choose_cluster(sha, "m" + sha, seen, written=at(ticks[sha]))
        except d.NotReady:
            continue
        pending.remove(sha)
    assert {c.id for c in decided.values()} == {min(shas, key=lambda s: (ticks[s], s))}


def test_candidates_dedupe_and_confirm_by_dhash() -> None:
    rows = [
        d.Neighbour("s1", "m", 0b1, 0, None),
        d.Neighbour("s1", "m", 0b1, 0, None),
        d.Neighbour("s2", "m", 0b111, 2**40 - 1, None),  # pHash near, dHash far
        d.Neighbour("me", "m", 0, 0, None),
    ]
    assert [r.sha256 for r in d.candidates(0, 0, rows, own_sha="me")] == ["s1"]


def test_cluster_lines() -> None:
    ms = [
        d.Member("c1", "dom", "a.jpg", "c1", 0),
        d.Member("c1", "dom", "b.jpg", "c1", 0),
        d.Member("c1", "dom", "c.png", "s9", 0b11),
        d.Member("c2", "dom", "x.jpg", "c2", 5),
        d.Member("c2", "dom", "y.jpg", "s3", 4),
    ]
    exact = list(d.cluster_lines(ms, near=False))
    assert exact == [{"kind": "exact", "members": [m.to_json(0) for m in ms[:2]]}]
    near = list(d.cluster_lines(ms, near=True))
    assert [line["kind"] for line in near] == ["near", "near"]
    assert [m["distance"] for m in near[0]["members"]] == [0, 0, 2]  # type: ignore[index]
    assert list(d.cluster_lines(ms[:1], near=True)) == []
    assert list(itertools.chain(d.cluster_lines([], near=True))) == []


def test_crossing_pairs_reports_clusters_split_across_splits() -> None:
    from typing import Any

    from corpus.app.dupes import crossing_pairs
    from corpus.domain.manifest import ManifestEntry

    class Members:
        def members(self, domain: str) -> list[d.Member]:
            return [
                d.Member("c1", "birds", "original/a/v1/x.jpg", "s1", 0),
                d.Member("c1", "birds", "original/b/v1/x.jpg", "s1", 0),
                d.Member("c1", "birds", "original/c/v1/y.png", "s2", 3),
                d.Member("c2", "birds", "original/a/v1/z.jpg", "s3", 0),
                d.Member("c2", "birds", "original/b/v1/z.jpg", "s3", 0),
            ]

    def line(blob: str, split: str, source: str = "") -> str:
        md5 = "q83vEj/4n4Y/rAifFGdz5A=="
        t = ("thumb", "1") if source else None
        return ManifestEntry("birds", blob, md5, 1, 1, 1, "birds", "a", "v1", t, source or blob, md5, (), split).to_line()

    lines = [
        line("original/a/v1/x.jpg", "train"),
        line("original/b/v1/x.jpg", "train"),
        line("transform/thumb/1/c/v1/y.png", "val", source="original/c/v1/y.png"),
        line("original/a/v1/z.jpg", "test"),
        line("original/b/v1/z.jpg", "test"),
        line("original/a/v1/alone.jpg", "val"),
    ]
    stub: Any = Members()
    assert list(crossing_pairs(stub, lines)) == [
        {
            "kind": "near",
            "a": {"blob": "original/a/v1/x.jpg", "split": "train"},
            "b": {"blob": "transform/thumb/1/c/v1/y.png", "split": "val"},
        }
    ]


def test_past_the_deadline_an_undecided_neighbour_is_passed_over() -> None:
    assert d.choose_cluster("b", "mb", [n("a")], wait=False) == d.Cluster("b", "mb")
    assert d.choose_cluster("b", "mb", [n("a"), n("c", "z")], wait=False) == d.Cluster("z", "mz")
