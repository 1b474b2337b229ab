"""--where: the grammar round-trips, evaluates like a reference, and refuses clearly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain import where as w
from corpus.domain.errors import MessageError

numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
cmps = st.builds(w.Cmp, st.sampled_from(w.NUMERIC), st.sampled_from(sorted(w.OPS)), numbers)
exprs = st.recursive(
    cmps | st.builds(w.Flag, st.sampled_from(w.FLAGS)),
    lambda inner: st.builds(w.Not, inner) | st.builds(w.And, inner, inner) | st.builds(w.Or, inner, inner),
    max_leaves=12,
)
facts = st.fixed_dictionaries({f: st.floats(-1e6, 1e6, allow_nan=False) for f in w.NUMERIC} | {f: st.booleans() for f in w.FLAGS})


@given(exprs)
def test_parse_render_round_trips(e: w.Expr) -> None:
    assert w.parse(w.render(e)) == e
    assert w.canonical(w.render(e)) == w.render(e)


@given(exprs, facts)
def test_evaluation_equals_pythons_own(e: w.Expr, values: dict[str, float]) -> None:
    """The reference: the canonical text is also a Python expression over the same names."""
    reference = eval(w.render(e), {"__builtins__": {}}, dict(values))  # the test oracle only
    assert w.evaluate(e, values) is bool(reference)


def test_precedence_and_spelling() -> None:
    e = w.parse("width>=224 AND sharpness >= 100 and not grey or aspect < 1")
    assert e == w.Or(
        w.And(w.And(w.Cmp("width", ">=", 224.0), w.Cmp("sharpness", ">=", 100.0)), w.Not(w.Flag("grey"))),
        w.Cmp("aspect", "<", 1.0),
    )
    assert w.parse("(width = 3)") == w.Cmp("width", "==", 3.0)
    assert w.render(w.parse("not (grey or width>1e3)")) == "not (grey or width>1000.0)"


def test_missing_facts_match_no_comparison() -> None:
    e = w.parse("sharpness>=0")
    assert w.evaluate(e, {"sharpness": None}) is False
    assert w.evaluate(w.parse("not grey"), {}) is True


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("sharpnes>=100", "unknown field 'sharpnes' (fields: width, height"),
        ("width>=", "unexpected end"),
        ("width>=abc", "needs a number"),
        ("width 3", "needs a comparison"),
        ("(width>3", "unexpected end"),
        ("width>3)", "after a complete expression"),
        ("width>3; import os", "unexpected character ';'"),
        ("", "empty expression"),
        ("and", "expected a field"),
        ("width>" + "9" * 400, "not a finite number"),
        ("(" * 40 + "grey" + ")" * 40, "nested more than"),
        ("not " * 40 + "grey", "nested more than"),
        ("grey or " * 100 + "grey", "longer than 512"),
    ],
)
def test_errors_are_one_line_naming_the_problem(text: str, says: str) -> None:
    with pytest.raises(MessageError) as exc:
        w.parse(text)
    assert says in str(exc.value) and "\n" not in str(exc.value)
