"""Version diff by content: every name in exactly one class, equal to a brute-force reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain.diff import diff
from corpus.domain.errors import MessageError

names = st.text("abcdef", min_size=1, max_size=3)
shas = st.sampled_from(["s1", "s2", "s3", "s4"])
sides = st.dictionaries(names, shas, max_size=12)


@given(sides, sides)
def test_counts_partition_both_sides_and_match_a_reference(old: dict[str, str], new: dict[str, str]) -> None:
    got = diff(sorted(old.items()), sorted(new.items()), listing=True)
    c = got.counts
    assert c["unchanged"] + c["changed"] + c["moved"] + c["removed"] == len(old)
    assert c["unchanged"] + c["changed"] + c["moved"] + c["added"] == len(new)
    both = old.keys() & new.keys()
    assert c["unchanged"] == sum(old[k] == new[k] for k in both)
    assert c["changed"] == sum(old[k] != new[k] for k in both)
    only_old = [old[k] for k in old.keys() - new.keys()]
    only_new = [new[k] for k in new.keys() - old.keys()]
    assert c["moved"] == sum(min(only_old.count(s), only_new.count(s)) for s in set(only_old))
    for pair in got.names["moved"]:
        a, b = pair.split(" -> ")
        assert old[a] == new[b] and a not in new and b not in old


def test_example_and_json() -> None:
    old = [("a.jpg", "s1"), ("b.jpg", "s2"), ("c.jpg", "s3"), ("d.jpg", "s4")]
    new = [("a.jpg", "s1"), ("b.jpg", "s9"), ("e.jpg", "s3"), ("f.jpg", "s5")]
    got = diff(old, new, listing=True)
    assert got.to_json() == {"added": 1, "removed": 1, "changed": 1, "unchanged": 1, "moved": 1}
    assert got.to_json(listing=True)["names"] == {
        "added": ["f.jpg"], "removed": ["d.jpg"], "changed": ["b.jpg"], "unchanged": ["a.jpg"], "moved": ["c.jpg -> e.jpg"],
    }  # fmt: skip


def test_refuses_unsorted_input_and_missing_digests() -> None:
    with pytest.raises(ValueError):
        diff([("b", "s"), ("a", "s")], [])
    with pytest.raises(MessageError, match="reindex --facts"):
        diff([("a", "")], [])
