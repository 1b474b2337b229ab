"""Training-set definitions with dedupe and where; cluster-based splits (pure)."""

from __future__ import annotations

import json

import pytest

from corpus.domain import trainsets as ts
from corpus.domain.errors import MessageError

BASE = {"trainset": {"name": "birds", "version": "v1"}, "sources": [{"domain": "birds", "tags": ["robin"]}]}


def req(**extra: object) -> ts.TrainsetRequest:
    return ts.TrainsetRequest.parse(json.dumps(BASE | extra))


def test_old_definitions_are_unchanged_and_options_are_canonical() -> None:
    plain = req()
    assert "dedupe" not in plain.definition() and "where" not in plain.definition()
    a = req(dedupe="near", where="WIDTH >= 224 and not  grey")
    b = req(where="width>=224.0 and (not grey)", dedupe="near")
    assert a.definition() == b.definition()
    body = json.loads(a.definition())
    assert body["dedupe"] == "near" and body["where"] == "width>=224.0 and (not grey)"
    again = ts.TrainsetRequest.from_definition("birds", "v1", a.definition())
    assert again == a and ts.TrainsetRequest.parse(a.to_json()) == a


@pytest.mark.parametrize(
    ("extra", "says"), [({"dedupe": "fuzzy"}, "'dedupe' must be one of"), ({"where": "blur>3"}, "unknown field 'blur'")]
)
def test_bad_options_are_refused(extra: dict[str, object], says: str) -> None:
    with pytest.raises(MessageError, match=says):
        req(**extra)


def test_split_follows_the_cluster_and_moved_counts_the_difference() -> None:
    split = ts.parse_split({"train": 80, "val": 10, "test": 10})
    own, founder = "00" * 16, "11" * 16
    assert ts.split_md5(own, None) == own and ts.split_md5(own, founder) == founder
    assert not ts.moved(own, None, split) and not ts.moved(own, own, split)
    others = [f"{i:032x}" for i in range(200)]
    assert any(ts.moved(o, founder, split) for o in others)
    assert all(ts.assign_split(ts.split_md5(o, founder), split) == ts.assign_split(founder, split) for o in others)


def test_dedupe_key() -> None:
    assert ts.dedupe_key(None, "s", "c") is None
    assert ts.dedupe_key(ts.Dedupe.EXACT, "s", "c") == "s"
    assert ts.dedupe_key(ts.Dedupe.NEAR, "s", "c") == "c"
    assert ts.dedupe_key(ts.Dedupe.NEAR, None, None) is None
