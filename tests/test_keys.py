from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from corpus.domain import keys
from corpus.domain.paths import SetRef

ILLEGAL = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


@given(text)
def test_escaped_fields_are_legal_table_keys(value):
    out = keys.escape(value)
    assert not ILLEGAL.search(out)
    assert len(out) <= keys.MAX_FIELD + 70
    assert "!" not in out


@given(text, text)
def test_escape_is_injective(a, b):
    if a != b:
        assert keys.escape(a) != keys.escape(b)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=16))
def test_short_fields_round_trip(value):
    assert keys.unescape(keys.escape(value)) == value


def test_known_collisions_of_naive_encodings_do_not_collide():
    variants = ["a/b", "a_b", "a~2Fb", "a\\b", "a#b", "a?b", "a%2Fb", "a\x00b", "a\x1fb", "A/b"]
    assert len({keys.escape(v) for v in variants}) == len(variants)


def test_long_values_are_hashed_distinctly():
    a, b = "x" * 5000, "x" * 4999 + "y"
    assert keys.escape(a) != keys.escape(b) and "*" in keys.escape(a)
    assert len(keys.escape(a)) < 200


dirs = st.lists(st.text(min_size=1, max_size=40).filter(lambda s: "/" not in s), max_size=5).map(tuple)
versions = st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z")


@given(dirs, versions, dirs, versions)
def test_set_keys_are_injective(d1, v1, d2, v2):
    r1, r2 = SetRef("birds", d1, v1), SetRef("birds", d2, v2)
    if r1 != r2:
        assert keys.set_row_key(r1) != keys.set_row_key(r2)
        assert keys.image_partition_key(r1) != keys.image_partition_key(r2)
    assert keys.set_row_key(r1) != keys.set_row_key(r1, ("thumbnail", "1"))


@given(dirs, versions)
def test_set_keys_are_legal_and_bounded(d, v):
    key = keys.image_partition_key(SetRef("a" * 63, d, v), ("t" * 64, "1" * 64))
    assert not ILLEGAL.search(key) and len(key) <= 512


def test_counter_rows_never_collide_with_files():
    assert not keys.image_row_key("!count!00").startswith(keys.COUNTER_PREFIX)
    assert keys.counter_row_key(3).startswith(keys.COUNTER_PREFIX)
