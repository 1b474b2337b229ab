"""The value objects that replaced hand-written splits and codecs (corpus.domain.refs)."""

from __future__ import annotations

import pytest

from corpus.domain.errors import InvalidNameError, MessageError
from corpus.domain.refs import Cursor, TrainsetRef, TransformRef


def test_transform_ref_parses_validates_and_prints_back() -> None:
    ref = TransformRef.parse("thumbnail:1")
    assert ref.pair == ("thumbnail", "1") and str(ref) == "thumbnail:1"
    assert TransformRef.parse("crop", version_required=False) == TransformRef("crop", "")
    for bad in ("thumbnail", ":1", "thumbnail:", "thumbnail:a/b"):
        with pytest.raises(InvalidNameError):
            TransformRef.parse(bad)
    assert TransformRef.from_label("") is None
    assert TransformRef.from_label("crop:2") == TransformRef("crop", "2")


def test_trainset_ref_is_a_message_error_when_malformed() -> None:
    assert TrainsetRef.parse("birds-cls:1").pair == ("birds-cls", "1")
    for bad in ("birds-cls", "birds/cls:1", "birds-cls:"):
        with pytest.raises(MessageError):
            TrainsetRef.parse(bad)


def test_cursor_round_trips_and_refuses_forgeries() -> None:
    c = Cursor.of({"PartitionKey": "birds", "RowKey": "o!red"})
    assert c is not None and Cursor.decode(c.encode()) == c and c.token() == {"PartitionKey": "birds", "RowKey": "o!red"}
    assert Cursor.of(None) is None and Cursor.decode("") is None
    for bad in ("!!", "eyJ4IjoxfQ", "x" * 5000):
        with pytest.raises(ValueError):
            Cursor.decode(bad)
