from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain.errors import MessageError
from corpus.domain.messages import CopyRequest, decode_body
from corpus.domain.tags import load_extractor, matches, normalize, tags_for
from corpus.store.hostconfig import load_queue_config, parse_timespan

REQ = CopyRequest("birds/v1/a/x.jpg", '"0x1"')


def test_tags_are_trimmed_folded_deduplicated():
    assert tags_for(("Red", " angry ", "", "  ", "RED", "Robin")) == ["red", "angry", "robin"]
    assert normalize(["Straße"]) == ["strasse"]


def test_tag_matching_is_case_insensitive_and_needs_all():
    assert matches(["red", "angry"], ["RED"]) and matches(["red", "angry"], ["angry", "Red"])
    assert not matches(["red"], ["red", "blue"])


def test_tag_extractor_is_pluggable_and_checked():
    assert tags_for(("a", "b"), "tests.test_tags_messages_config:last_only") == ["b"]
    with pytest.raises(ValueError, match="module:function"):
        load_extractor("nonsense")


def last_only(dirs):
    return dirs[-1:]


def test_copy_request_round_trip_plain_and_base64():
    text = REQ.to_json()
    assert CopyRequest.parse(text) == REQ
    assert CopyRequest.parse(base64.b64encode(text.encode()).decode()) == REQ


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.pop("staged_etag"), "missing field 'staged_etag'"),
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.update(staged_name=1), "wrong type"),
        (lambda d: d.update(staged_name=True), "boolean"),
        (lambda d: d.update(md5="0" * 32), "unknown field"),  # schema 2 claims nothing about the bytes
        (lambda d: d.update(kind="other"), "kind"),
        (lambda d: d.update(v=3), "schema version"),
    ],
)
def test_copy_request_is_strict(mutate, reason):
    data = json.loads(REQ.to_json())
    mutate(data)
    with pytest.raises(MessageError, match=reason):
        CopyRequest.parse(json.dumps(data))


def test_copy_request_schema_1_claims_are_accepted_and_ignored():
    v1 = {"kind": "copy", "v": 1, "staged_name": "birds/v1/a/x.jpg", "staged_etag": '"0x1"', "size": 5, "md5": "x" * 32}
    assert CopyRequest.parse(json.dumps(v1)) == REQ
    with pytest.raises(MessageError, match="wrong type"):
        CopyRequest.parse(json.dumps({**v1, "size": "5"}))


@pytest.mark.parametrize(
    "body",
    [
        '{"kind": "copy", "v": ' + "9" * 5001 + ', "staged_name": "a", "staged_etag": "b"}',
        '{"kind": "copy", "v": NaN, "staged_name": "a", "staged_etag": "b"}',
        '{"kind": "copy", "v": Infinity, "staged_name": "a", "staged_etag": "b"}',
        '{"kind": "copy", "v": -Infinity, "staged_name": "a", "staged_etag": "b"}',
        '{"kind": "copy", "v": 1e999, "staged_name": "a", "staged_etag": "b"}',
    ],
)
def test_huge_integers_and_non_finite_numbers_are_permanent_message_errors(body):
    """A plain ValueError would be retried maxDequeueCount times; NaN/Infinity would pass range checks."""
    with pytest.raises(MessageError, match=r"number|finite"):
        CopyRequest.parse(body)


@given(st.text(max_size=200))
def test_decode_body_never_raises_anything_but_message_error(text):
    try:
        decode_body(text)
    except MessageError:
        pass


def test_decode_body_refuses_non_objects():
    with pytest.raises(MessageError, match="JSON object"):
        decode_body("[1, 2]")


@pytest.mark.parametrize(("text", "seconds"), [("00:00:05", 5), ("00:01:00", 60), ("1.02:00:00", 93600), ("00:00:00.5", 0.5)])
def test_timespans(text, seconds):
    assert parse_timespan(text) == seconds


def test_host_json_queue_settings(tmp_path):
    (tmp_path / "host.json").write_text(
        json.dumps({"extensions": {"queues": {"batchSize": 4, "newBatchThreshold": 1, "messageEncoding": "none"}}})
    )
    cfg = load_queue_config(tmp_path / "host.json")
    assert (cfg.max_concurrency, cfg.message_encoding, cfg.max_dequeue_count) == (5, "none", 5)
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"queues": {"batchSize": 64}}}))
    with pytest.raises(ValueError, match="batchSize"):
        load_queue_config(tmp_path / "host.json")


def test_repository_host_json_sets_every_queue_setting_explicitly():
    from corpus.app.runtime import APP_ROOT

    queues = json.loads((APP_ROOT / "host.json").read_text())["extensions"]["queues"]
    assert {"batchSize", "newBatchThreshold", "maxDequeueCount", "visibilityTimeout", "messageEncoding"} <= set(queues)
