"""What changed between two versions of an image set, by content (SHA-256), pure.

Each side is an iterable of ``(name, sha256)``, **sorted by** ``key(name)`` (strictly increasing:
a name appears once per side; the ``Images`` table yields a set's files in its RowKey order, so the
caller passes :func:`corpus.domain.keys.image_row_key` as ``key``). Every name of either side is
counted in exactly one class:

``unchanged``  same name, same content;
``changed``    same name, other content;
``moved``      a name only in ``old`` and a name only in ``new`` with the same content: counted
               once, as a pair (``old → new``), not as one removed and one added. When several
               old and new names share one content they are paired in name order; the rest stay
               added or removed;
``added``      a name only in ``new`` (and not the target of a move);
``removed``    a name only in ``old`` (and not the source of a move).

So ``unchanged + changed + moved + removed`` = the names in ``old`` and ``unchanged + changed +
moved + added`` = the names in ``new``. Names compared are exact (case-sensitive). Images without
a SHA-256 (not yet backfilled by ``corpus reindex --facts``) make the diff refuse rather than
guess: a missing digest raises :class:`~corpus.domain.errors.MessageError`.

**Memory.** The two sides are merged as they stream (one name of each side at a time); only
names that are on one side alone are held, to pair moves: memory is proportional to the number
of added and removed names, not to the size of the sets (two versions of 1,000,000 files that
differ in 100 hold about 100 names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from corpus.domain.errors import MessageError

KINDS = ("added", "removed", "changed", "unchanged", "moved")


@dataclass(slots=True)
class Diff:
    """Counts per kind, and (when listing) the names: ``moved`` as ``(old, new)`` pairs."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    names: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def to_json(self, listing: bool = False) -> dict[str, object]:
        out: dict[str, object] = dict(self.counts)
        if listing:
            out["names"] = {k: list(v) for k, v in self.names.items()}
        return out


def _checked(side: Iterable[tuple[str, str]], key: Callable[[str], str], what: str) -> Iterator[tuple[str, str, str]]:
    previous: str | None = None
    for name, sha in side:
        if not sha:
            raise MessageError(f"{what}: {name!r} has no SHA-256 yet; run 'corpus reindex --facts' first")
        k = key(name)
        if previous is not None and k <= previous:
            raise ValueError(f"{what}: names are not in increasing order at {name!r}")
        previous = k
        yield k, name, sha


def diff(
    old: Iterable[tuple[str, str]],
    new: Iterable[tuple[str, str]],
    key: Callable[[str], str] = lambda n: n,
    listing: bool = False,
) -> Diff:
    """Compare two sorted sides; see the module docstring."""
    out = Diff()
    only_old: dict[str, list[str]] = {}  # sha256 → names only in old
    only_new: dict[str, list[str]] = {}

    def note(kind: str, name: str) -> None:
        out.counts[kind] += 1
        if listing:
            out.names[kind].append(name)

    a_it, b_it = _checked(old, key, "from"), _checked(new, key, "to")
    a, b = next(a_it, None), next(b_it, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            only_old.setdefault(a[2], []).append(a[1])
            a = next(a_it, None)
        elif a is None or b[0] < a[0]:
            only_new.setdefault(b[2], []).append(b[1])
            b = next(b_it, None)
        else:
            note("unchanged" if a[2] == b[2] else "changed", b[1])
            a, b = next(a_it, None), next(b_it, None)
    for sha, olds in only_old.items():
        news = only_new.pop(sha, [])
        pairs = min(len(olds), len(news))
        out.counts["moved"] += pairs
        if listing:
            out.names["moved"].extend(f"{o} -> {n}" for o, n in zip(olds[:pairs], news[:pairs], strict=True))
        for name in olds[pairs:]:
            note("removed", name)
        for name in news[pairs:]:
            note("added", name)
    for news in only_new.values():
        for name in news:
            note("added", name)
    if listing:
        for kind in ("added", "removed"):
            out.names[kind].sort(key=key)
    return out
