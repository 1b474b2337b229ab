"""Pure rules of getting data out: the manifest line, local names, shard plans, export messages."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.cli.pull import parse_size
from corpus.domain.errors import MessageError
from corpus.domain.exports import ExportRequest, ExportShardJob, parse_export_message
from corpus.domain.layouts import (
    MAX_COMPONENT_BYTES,
    azureml_line,
    label_key,
    local_paths,
    plan_shards,
    safe_component,
    sample_key,
)
from corpus.domain.manifest import ManifestEntry, iter_manifest, parse_line, parse_ref, write_manifest


def entry(blob: str, container: str = "birds", size: int = 100, labels=("robin",), split: str = "train") -> ManifestEntry:
    md5 = base64.b64encode(hashlib.md5(blob.encode()).digest()).decode()
    return ManifestEntry(container, blob, md5, size, 4, 3, container, "red/robin", "v1", None, blob, md5, tuple(labels), split)


def test_manifest_line_round_trips_and_the_contract_line_parses():
    contract = (
        '{"container": "birds", "blob": "transform/thumbnail/1/blue/calm/jay/v3/a.jpg", "md5": "1B2M2Y8AsgTpgAmY7PhCfg==",'
        ' "size": 10240, "width": 256, "height": 192, "domain": "birds", "path": "blue/calm/jay", "version": "v3",'
        ' "transform": {"name": "thumbnail", "version": "1"},'
        ' "source": {"blob": "original/blue/calm/jay/v3/a.jpg", "md5": "1B2M2Y8AsgTpgAmY7PhCfg=="},'
        ' "labels": ["jay"], "split": "train"}'
    )
    e = parse_line(contract)
    assert e.transform == ("thumbnail", "1") and e.md5_hex == "d41d8cd98f00b204e9800998ecf8427e"
    assert parse_line(e.to_line()) == e
    assert json.loads(e.to_line()) == json.loads(contract)
    for bad in ('{"container": "b"}', "[1]", "nope", contract.replace('"size": 10240', '"size": -1')):
        with pytest.raises(MessageError):
            parse_line(bad, 7)


def test_manifest_stream_is_sorted_checked_and_deterministic():
    entries = [entry("original/b.jpg"), entry("original/a.jpg"), entry("original/c.jpg", container="cats")]
    data = write_manifest(entries)
    assert data == write_manifest(list(reversed(entries)))  # byte-identical whatever the input order
    assert [e.blob for e in iter_manifest(io.BytesIO(data))] == ["original/a.jpg", "original/b.jpg", "original/c.jpg"]
    unsorted = gzip.compress("".join(e.to_line() + "\n" for e in entries).encode())
    with pytest.raises(MessageError, match="out of order"):
        list(iter_manifest(io.BytesIO(unsorted)))


def test_parse_ref():
    assert parse_ref("birds-cls:1") == ("birds-cls", "1")
    for bad in ("birds", ":1", "a:", "a/b:1", "..:1"):
        with pytest.raises(MessageError):
            parse_ref(bad)


WINDOWS_BAD = set('<>:"\\|?*') | {chr(c) for c in range(32)}


@given(st.text(min_size=1, max_size=300))
def test_safe_component_is_safe_everywhere_and_reversible_unless_shortened(name):
    s = safe_component(name)
    assert not (set(s.name) & WINDOWS_BAD) and "/" not in s.name
    assert s.name not in ("", ".", "..") and s.name[-1] not in " ."
    assert len(s.name.encode()) <= MAX_COMPONENT_BYTES
    assert s.name.split(".")[0].casefold() not in {"con", "prn", "aux", "nul", "com1", "lpt1"}
    if not s.lossy:
        assert unquote(s.name) == name


def test_safe_component_examples():
    assert safe_component("a.jpg").name == "a.jpg" and not safe_component("a.jpg").changed
    assert safe_component("a:b.jpg").name == "a%3Ab.jpg"
    assert safe_component("CON.jpg").name == "%43ON.jpg"
    assert safe_component("x.").name == "x%2E"
    assert safe_component("100%.jpg").name == "100%25.jpg"
    long = safe_component("é" * 300 + ".jpg")
    assert long.lossy and long.name.endswith(".jpg") and len(long.name.encode()) <= MAX_COMPONENT_BYTES


@given(
    st.lists(
        st.sampled_from(["a.jpg", "A.jpg", "b.JPG", "B.jpg", "a:b.jpg", "a%3Ab.jpg", "con.png", "x"]), min_size=1, max_size=8
    )
)
def test_local_paths_are_unique_up_to_case_in_both_layouts(files):
    entries = [entry(f"original/d{i % 2}/{f}", labels=("robin",) if i % 3 else ("jay", "robin")) for i, f in enumerate(files)]
    entries = list({e.blob: e for e in entries}.values())
    for layout in ("imagefolder", "corpus"):
        paths = local_paths(entries, layout)
        assert len({p.rel.casefold() for p in paths}) == len(entries)
        assert paths == local_paths(entries, layout)
    folder = local_paths(entries, "imagefolder")
    assert all(p.rel.split("/")[1] in ("robin", "jay+robin") and p.rel.startswith("train/") for p in folder)


def test_label_key():
    assert label_key(["robin"]) == "robin" and label_key(["robin", "jay"]) == "jay+robin" and label_key([]) == "_unlabeled"


@given(
    st.lists(st.tuples(st.integers(0, 50_000), st.sampled_from(["train", "val", "test"])), max_size=60),
    st.integers(20_000, 200_000),
)
def test_shard_plan_covers_each_split_exactly_once_within_the_size(items, shard_bytes):
    entries = [entry(f"original/{i:04d}.jpg", size=size, split=split) for i, (size, split) in enumerate(items)]
    plans = plan_shards(entries, shard_bytes)
    assert plans == plan_shards(entries, shard_bytes)
    for split in {s for _, s in items}:
        mine = [p for p in plans if p.split == split]
        assert [p.index for p in mine] == list(range(len(mine)))
        covered = [i for p in mine for i in range(p.start, p.start + p.count)]
        assert covered == list(range(sum(1 for _, s in items if s == split)))
        of_split = [e for e in entries if e.split == split]
        for p in mine:
            cost = sum(e.size + 3072 for e in of_split[p.start : p.start + p.count])
            assert p.count == 1 or cost <= shard_bytes


@given(
    st.lists(st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=20), min_size=1, max_size=20, unique=True)
)
def test_sample_keys_are_injective_and_dotless_in_the_base_name(names):
    entries = [entry(f"original/x/{n.replace('/', '_')}") for n in names]
    entries = list({e.blob: e for e in entries}.values())
    keys = [sample_key(e) for e in entries]
    assert len(set(keys)) == len(keys)
    assert all("." not in k.rpartition("/")[2] for k in keys)


def test_azureml_line_has_the_automl_fields():
    line = json.loads(azureml_line(entry("original/a.png"), "https://x/birds/original/a.png"))
    assert line == {
        "image_url": "https://x/birds/original/a.png",
        "image_details": {"format": "png", "width": "4px", "height": "3px"},
        "label": "robin",
    }
    assert json.loads(azureml_line(entry("original/a.png", labels=("a", "b")), "u"))["label"] == ["a", "b"]


def test_export_messages_round_trip_and_refuse_bad_input():
    req = ExportRequest("birds-cls", "1", "webdataset", 40_000)
    assert parse_export_message(req.to_json()) == req
    job = ExportShardJob("birds-cls", "1", "train", 3, 120, 40, 40_000)
    assert parse_export_message(job.to_json()) == job
    for bad in (
        req.to_json().replace("webdataset", "zip"),
        req.to_json().replace("40000", "10"),
        job.to_json().replace('"count": 40', '"count": 0'),
        '{"kind": "export", "v": 1, "trainset": {"name": "a/b", "version": "1"}, "format": "azureml"}',
    ):
        with pytest.raises(MessageError):
            parse_export_message(bad)


def test_parse_size():
    assert parse_size("500MB") == 500_000_000 and parse_size("1GiB") == 2**30 and parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")
