"""corpus.store.sorted_keys: the chunked sorted set under the in-memory stores agrees with a plain
sorted list through random inserts, deletes and iterations, across chunk splits and empties."""

from __future__ import annotations

import random
from bisect import bisect_left

import pytest

from corpus.store.sorted_keys import SortedKeys


@pytest.mark.parametrize("seed", range(5))
def test_sorted_keys_agree_with_a_sorted_list(seed: int) -> None:
    rng = random.Random(seed)
    keys, plain = SortedKeys(load=4), list[str]()
    for _ in range(3_000):
        k = f"{rng.randrange(400):04d}"
        if k in plain and rng.random() < 0.6:
            keys.remove(k)
            plain.remove(k)
        elif k not in plain:
            keys.add(k)
            plain.append(k)
            plain.sort()
        lo = f"{rng.randrange(410):04d}"[: rng.randrange(1, 5)]
        assert list(keys.iter_from(lo)) == plain[bisect_left(plain, lo) :]
        assert len(keys) == len(plain)
    assert list(keys.iter_from("")) == plain


def test_removing_a_missing_key_is_an_error() -> None:
    keys = SortedKeys()
    keys.add("b")
    with pytest.raises(KeyError):
        keys.remove("a")
    assert list(keys.iter_from("")) == ["b"]
