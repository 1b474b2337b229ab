"""The tag index's keys: set rows and index rows never mix, ranges select exactly one tag."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corpus.domain import keys
from corpus.domain.paths import SetRef

text = st.text(min_size=1, max_size=30)
names = st.from_regex(r"[A-Za-z0-9._-]{1,10}", fullmatch=True)


@given(st.lists(text, max_size=4), names, st.none() | st.tuples(names, names), text)
def test_set_rows_sort_below_index_rows(dirs, version, transform, tag):
    rk = keys.set_row_key(SetRef("birds", tuple(dirs), version), transform)
    assert rk < keys.SETS_UPPER <= keys.tag_index_row_key(tag, rk)


@given(text, text, names, names, st.lists(text, max_size=3))
def test_a_tag_range_holds_exactly_that_tags_rows(tag, other, name, tversion, dirs):
    rk_o = keys.set_row_key(SetRef("d", tuple(dirs), "v1"))
    rk_t = keys.set_row_key(SetRef("d", tuple(dirs), "v1"), (name, tversion))
    for prefix, inside in ((keys.ORIGINALS_PREFIX, rk_o), (keys.transform_set_prefix(name, tversion), rk_t)):
        lo = keys.tag_index_prefix(tag, prefix)
        hi = keys.after(lo)
        assert lo <= keys.tag_index_row_key(tag, inside) < hi
        assert keys.set_key_of_index(tag, keys.tag_index_row_key(tag, inside)) == inside
        if keys.escape(other) != keys.escape(tag):
            assert not lo <= keys.tag_index_row_key(other, inside) < hi
    assert (
        not keys.tag_index_prefix(tag, keys.ORIGINALS_PREFIX)
        <= keys.tag_index_row_key(tag, rk_t)
        < keys.after(keys.tag_index_prefix(tag, keys.ORIGINALS_PREFIX))
    )
