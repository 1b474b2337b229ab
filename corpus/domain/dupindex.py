"""The duplicate index, pure: what is a duplicate, how an arriving image finds its own in O(1) reads.

**Exact duplicates** have the same SHA-256 (:attr:`corpus.domain.facts.ImageFacts.sha256`).

**Near duplicates** have perceptual hashes within :data:`NEAR_PHASH` bits (Hamming distance of the
64-bit pHash) *and* difference hashes within :data:`NEAR_DHASH` bits: pHash finds candidates, dHash
(a different view of the picture: gradients rather than DCT) confirms them, which is what keeps
precision high when many distinct pictures share coarse structure (docs/benchmarks.md measures
recall and precision on generated photo-like pictures and their re-encodes, half-size copies, PNG
conversions and ±10 % brightness versions).

**Bands.** The pHash is cut into :data:`BANDS` bands of :data:`BAND_BITS` bits. Two hashes within
Hamming distance ``BANDS - 1`` = 3 agree *exactly* on at least one band (pigeonhole: 3 differing
bits touch at most 3 of the 4 bands). So an image is indexed under one row per band, RowKey
``b<band>!<value>!<phash>!<sha256>`` (:func:`band_row_key`), and an arriving image finds every
earlier image within the threshold by reading its own 4 band ranges (:func:`band_range`),
whatever the size of the corpus; :data:`NEAR_PHASH` may therefore not exceed ``BANDS - 1``
(asserted below; a property test checks that every pair within the threshold is found). A band
range holds one row per *distinct content*, so exact copies do not grow it; with uniformly spread
hashes a domain of N distinct pictures has N / 65,536 rows per band value on average (15 at a
million); a read is bounded to :data:`MAX_BAND_ROWS` rows per band, documented as the point where
a pathological band (thousands of flat, featureless pictures) stops being searched.

**One partition per domain.** Band, content and member rows of a domain share one partition
(:func:`partition`), so the rows one image adds are written in entity-group transactions (all or
nothing, one request each) rather than one request per row. The price is that one domain's index
writes share one partition's throughput (Azure: about 2,000 entities a second), hundreds of
images a second per domain.

**Featureless pictures** (RMS contrast below :data:`FLAT_CONTRAST`) are not put in the bands:
they are their own cluster, and only exact copies join it.

**Clusters.** A domain is the scope: originals of every set and version of one domain (container)
are compared with each other. Each distinct content joins one cluster when it is first indexed,
recorded insert-only in its *content row* and never changed (:func:`choose_cluster`):

* a content with indexed neighbours that already belong to clusters joins the smallest of those
  cluster ids (cluster ids are SHA-256 hex of the founding content);
* otherwise it founds a cluster, named by its own SHA-256, unless a neighbour that is *not yet
  decided* wrote its band rows *before* it did: then it is not ready, and is retried once that
  neighbour has decided. "Before" is the order of (band rows' service ``Timestamp``, SHA-256)
  (:attr:`Neighbour.written`; a content whose own band rows were not seen falls back to the
  SHA-256 alone). Why the write time and not the SHA-256 alone: every content writes its band
  rows before it reads its neighbours', so of two near duplicates the one that wrote second
  always sees the first; with a SHA-256 rule, the first could read before the second wrote (see
  nothing, found a cluster) while the second, with the smaller SHA-256, passed the first over
  (found another): two clusters. With the write order, the second waits for the first, and the
  first never waits for the second (this assumes the service's clock, one per partition, gives
  a write that follows another's read a later ``Timestamp``: Azure's has sub-millisecond ticks;
  were the first's write, its read and the second's write all within one tick, the tie is broken
  by SHA-256 and the old race remains). Two near duplicates that arrive at the same moment (an
  original and its re-encode in the same upload) thus end in the same cluster, whichever is
  delivered first, and delivering either twice changes nothing (its content row is already
  there). The order is strict and total, and the earliest undecided content never waits, so
  nobody waits forever; a neighbour undecided for longer than :data:`STALE_SECONDS`
  (its ingest failed for good) is ignored, and so is one still undecided when the waiter's own
  deadline passes (its worker died mid-way and its message is not yet visible again): then the
  two may end in different clusters, the price of never blocking ingest on a dead worker.
* Clusters are never merged (rows are insert-only): a picture that arrives near two *existing*
  clusters joins the smaller one; the other stays apart. That bridge is the one way two near
  duplicates can land in different clusters; ``corpus dupes --trainset`` lists such pairs.

Every content carries its cluster's id and the founding content's MD5 (:class:`Cluster`). A
training set assigns splits by the cluster's MD5 (:func:`corpus.domain.trainsets.assign_split`),
which for a picture without duplicates is its own MD5: exactly the split it had before clusters.

**Members.** Clusters with two or more images are listed by member rows in one partition per
domain (:func:`member_partition`), RowKey ``cluster!sha256!container!blob`` (escaped), so
``corpus dupes`` reads clusters in order, paged, in time proportional to the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from corpus.domain.errors import CorpusError
from corpus.domain.keys import SEPARATOR, escape

BANDS = 4
BAND_BITS = 16
HASH_BITS = BANDS * BAND_BITS
NEAR_PHASH = 3
"""Largest pHash Hamming distance of a near duplicate (bits of 64); the bands find every such pair."""
NEAR_DHASH = 10
"""Largest dHash Hamming distance that confirms a pHash candidate (bits of 64)."""
MAX_BAND_ROWS = 1000
"""Rows read from one band partition for one arriving image (one table page)."""
STALE_SECONDS = 600.0
"""An undecided neighbour older than this is not waited for (its ingest failed; see the module docstring)."""

FLAT_CONTRAST = 0.01
"""Below this RMS contrast (:attr:`corpus.domain.facts.ImageFacts.contrast`) a picture is featureless
(one flat colour, a blank scan): its perceptual hashes say nothing (every flat picture hashes
alike, whatever its colour), so it is matched only exactly, never as a near duplicate."""

assert NEAR_PHASH <= BANDS - 1, "the band scheme finds pairs within BANDS - 1 bits only"


def has_structure(contrast: float) -> bool:
    """Is a picture with this RMS contrast indexed for near duplicates? (:data:`FLAT_CONTRAST`)"""
    return contrast >= FLAT_CONTRAST


_MASK = (1 << BAND_BITS) - 1


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def hash_int(hex_hash: str) -> int:
    """A 16-hex-digit hash as an int (what :mod:`corpus.domain.facts` writes)."""
    if len(hex_hash) != HASH_BITS // 4:
        raise ValueError(f"hash {hex_hash!r} is not {HASH_BITS // 4} hex digits")
    return int(hex_hash, 16)


def bands(phash: int) -> tuple[int, ...]:
    """The :data:`BANDS` band values of a 64-bit hash, most significant band first."""
    return tuple((phash >> (BAND_BITS * (BANDS - 1 - i))) & _MASK for i in range(BANDS))


def share_band(a: int, b: int) -> bool:
    return any(x == y for x, y in zip(bands(a), bands(b), strict=True))


def is_near(phash_a: int, dhash_a: int, phash_b: int, dhash_b: int) -> bool:
    """Near duplicates: pHash within :data:`NEAR_PHASH` and dHash within :data:`NEAR_DHASH`."""
    return hamming(phash_a, phash_b) <= NEAR_PHASH and hamming(dhash_a, dhash_b) <= NEAR_DHASH


# -- table keys -------------------------------------------------------------------------------


def partition(domain: str) -> str:
    """PartitionKey of every index row of ``domain`` (see the module docstring)."""
    return escape(domain)


def _range(prefix: str) -> tuple[str, str]:
    """[low, high) of the RowKeys that start with ``prefix`` (which ends in the separator)."""
    return prefix, prefix[:-1] + chr(ord(SEPARATOR) + 1)


def band_row_key(band: int, value: int, phash_hex: str, sha256: str) -> str:
    """RowKey of a content under one of its bands: one row per distinct content and band."""
    return SEPARATOR.join((f"b{band}", f"{value:04x}", phash_hex, sha256))


def band_row_keys(phash_hex: str, sha256: str) -> list[str]:
    """The :data:`BANDS` band rows of a content."""
    return [band_row_key(i, v, phash_hex, sha256) for i, v in enumerate(bands(hash_int(phash_hex)))]


def band_range(band: int, value: int) -> tuple[str, str]:
    """[low, high) RowKeys of every content whose band ``band`` has ``value``."""
    return _range(SEPARATOR.join((f"b{band}", f"{value:04x}", "")))


def band_ranges(phash: int) -> list[tuple[str, str]]:
    """The :data:`BANDS` ranges an arriving image reads."""
    return [band_range(i, v) for i, v in enumerate(bands(phash))]


def content_row_key(sha256: str) -> str:
    """RowKey of a content's row: its cluster, decided once (insert-only)."""
    return SEPARATOR.join(("c", sha256))


MEMBERS = _range("m" + SEPARATOR)
"""[low, high) RowKeys of every member row of a domain (clusters of two or more images)."""


def member_row_key(cluster: str, sha256: str, container: str, blob: str) -> str:
    """RowKey of one member: sorted by cluster, then content, then place, so a cluster reads in one range."""
    return SEPARATOR.join(("m", cluster, sha256, escape(container), escape(blob)))


def claims_partition(trainset: str, version: str) -> str:
    """PartitionKey of a training set's ``--dedupe`` claims (RowKey: the content or cluster kept).
    ``~`` starts no escaped domain name, so it never meets a domain's index partition."""
    return SEPARATOR.join(("~ts", escape(trainset), escape(version)))


def cluster_range(cluster: str) -> tuple[str, str]:
    """[low, high) RowKeys of one cluster's member rows."""
    return _range(SEPARATOR.join(("m", cluster, "")))


# -- clusters ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cluster:
    """A cluster's id (SHA-256 hex of its founding content) and that content's MD5 (hex), which
    decides the split of every member."""

    id: str
    md5: str


@dataclass(frozen=True, slots=True)
class Neighbour:
    """An indexed content within the near threshold of an arriving one, with its cluster if decided."""

    sha256: str
    md5: str
    phash: int
    dhash: int
    cluster: Cluster | None
    age_seconds: float = 0.0
    written: datetime | None = None
    """When its band rows were written (the service's ``Timestamp``); None if unknown."""


class NotReady(CorpusError):
    """A neighbour whose band rows were written first has not decided its cluster yet: try again later (transient)."""

    def __init__(self, waiting_for: str) -> None:
        super().__init__(f"waiting for content {waiting_for} to join its cluster first")
        self.waiting_for = waiting_for


def candidates(phash: int, dhash: int, rows: Iterable[Neighbour], own_sha: str = "") -> Iterator[Neighbour]:
    """The band rows' contents that are near duplicates of (phash, dhash), each once, not itself."""
    seen: set[str] = {own_sha}
    for row in rows:
        if row.sha256 in seen:
            continue
        seen.add(row.sha256)
        if is_near(phash, dhash, row.phash, row.dhash):
            yield row


def written_first(a: tuple[datetime | None, str], b: tuple[datetime | None, str]) -> bool:
    """Did content ``a`` (its band rows' write time, SHA-256) write before ``b``? By write time,
    ties broken by SHA-256; by SHA-256 alone when either write time is unknown. A strict order:
    of two distinct contents exactly one wrote first."""
    (wa, sa), (wb, sb) = a, b
    if wa is None or wb is None or wa == wb:
        return sa < sb
    return wa < wb


def choose_cluster(
    sha256: str, md5: str, neighbours: Iterable[Neighbour], wait: bool = True, written: datetime | None = None
) -> Cluster:
    """The cluster a new content joins; see the module docstring. ``written``: when its own band
    rows were written. Raises :class:`NotReady` (only with ``wait``: without it, undecided
    neighbours are passed over, as stale ones always are)."""
    decided: list[Cluster] = []
    for n in neighbours:
        if n.cluster is not None:
            decided.append(n.cluster)
        elif wait and n.age_seconds <= STALE_SECONDS and written_first((n.written, n.sha256), (written, sha256)):
            raise NotReady(n.sha256)
    if decided:
        return min(decided, key=lambda c: c.id)
    return Cluster(sha256, md5)


# -- reading clusters -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One image of a cluster, as ``corpus dupes`` reports it."""

    cluster: str
    container: str
    blob: str
    sha256: str
    phash: int

    def to_json(self, distance: int) -> dict[str, object]:
        return {"container": self.container, "blob": self.blob, "sha256": self.sha256, "distance": distance}


def cluster_lines(members: Iterable[Member], near: bool) -> Iterator[dict[str, object]]:
    """Group member rows (in RowKey order: by cluster, then content) into ``dupes`` lines.

    Without ``near``: one ``exact`` line per content held by two or more images. With ``near``:
    one line per cluster with two or more images, ``exact`` when they are all one content, else
    ``near``. ``distance`` is each member's pHash distance to the cluster's first member. Memory:
    one cluster at a time.
    """
    return (line for _, line in keyed_cluster_lines(members, near))


def keyed_cluster_lines(members: Iterable[Member], near: bool) -> Iterator[tuple[str, dict[str, object]]]:
    """:func:`cluster_lines`, each line with the RowKey of its first member row: a read that starts
    at that key (inclusive) yields this line again and everything after it, so it is the line's
    place in a paged listing (``corpus dupes --continuation``). A line is the rows of one cluster
    (``near``) or of one content of one cluster (exact): both are contiguous in RowKey order."""

    def key(m: Member) -> str:
        return member_row_key(m.cluster, m.sha256, m.container, m.blob)

    def lines_of(group: list[Member]) -> Iterator[tuple[str, dict[str, object]]]:
        if near:
            if len(group) < 2:
                return
            kind = "exact" if len({m.sha256 for m in group}) == 1 else "near"
            first = group[0].phash
            yield key(group[0]), {"kind": kind, "members": [m.to_json(hamming(first, m.phash)) for m in group]}
            return
        by_sha: dict[str, list[Member]] = {}
        for m in group:
            by_sha.setdefault(m.sha256, []).append(m)
        for same in by_sha.values():
            if len(same) >= 2:
                yield key(same[0]), {"kind": "exact", "members": [m.to_json(0) for m in same]}

    group: list[Member] = []
    for m in members:
        if group and m.cluster != group[0].cluster:
            yield from lines_of(group)
            group = []
        group.append(m)
    if group:
        yield from lines_of(group)
