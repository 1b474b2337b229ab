"""Training sets, pure parts: the request schema, labels, splits, manifest lines and their gzip."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.app.trainsets import manifest_digest
from corpus.domain import manifest as mf
from corpus.domain import trainsets as ts
from corpus.domain.errors import MessageError
from corpus.domain.manifest import ManifestEntry
from corpus.domain.trainsets import LabelOutcome, TrainsetContinue, TrainsetRequest

ISSUE_EXAMPLE = """{"trainset": {"name": "birds-cls", "version": "1"},
 "sources": [{"domain": "birds", "tags": ["robin"], "version": "v3"},
             {"domain": "birds", "path": "blue/calm/jay", "version": "v3",
              "transform": {"name": "thumbnail", "version": "1"}}],
 "labels": {"classes": ["robin", "jay"]},
 "split": {"train": 80, "val": 10, "test": 10}}"""

md5s = st.binary(min_size=16, max_size=16).map(bytes.hex)


def test_the_issue_example_parses_and_round_trips():
    req = TrainsetRequest.parse(ISSUE_EXAMPLE)
    assert (req.name, req.version, req.classes) == ("birds-cls", "1", ("robin", "jay"))
    assert req.split == (("test", 10), ("train", 80), ("val", 10))
    assert {s.transform for s in req.sources} == {None, ("thumbnail", "1")}
    assert TrainsetRequest.parse(req.to_json()) == req
    assert TrainsetRequest.from_definition(req.name, req.version, req.definition()) == req


def test_the_same_meaning_written_differently_is_one_definition():
    a = json.loads(ISSUE_EXAMPLE)
    b = json.loads(ISSUE_EXAMPLE)
    b["sources"].reverse()
    b["split"] = {"test": 10, "val": 10, "train": 80}
    b["sources"][1]["tags"] = ["  ROBIN "]
    assert TrainsetRequest.parse(json.dumps(a)).definition() == TrainsetRequest.parse(json.dumps(b)).definition()
    c = json.loads(ISSUE_EXAMPLE)
    c["labels"]["classes"] = ["jay", "robin"]
    assert TrainsetRequest.parse(json.dumps(c)).definition() != TrainsetRequest.parse(json.dumps(a)).definition()


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda m: m.update(extra=1), "unknown field"),
        (lambda m: m["split"].update(train=81), "sum to 101"),
        (lambda m: m["split"].update(train=True), "integer percentage"),
        (lambda m: m.update(sources=[]), "at least one source"),
        (lambda m: m["sources"][0].update(path="a/b"), "exactly one of"),
        (lambda m: m["sources"][1].pop("version"), "needs 'version'"),
        (lambda m: m["trainset"].update(version="a/b"), "invalid training set version"),
        (lambda m: m["labels"].update(classes=["a", "A"]), "twice"),
        (lambda m: m["sources"][0].update(domain="Bad_Domain"), "invalid domain"),
        (lambda m: m["sources"][1]["transform"].pop("version"), "missing field 'version'"),
        (lambda m: m["labels"].update(classes=["x" * 40] * 1 + [f"c{i:05d}" + "y" * 30 for i in range(999)]), "definition is"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(mutate, why):
    msg = json.loads(ISSUE_EXAMPLE)
    mutate(msg)
    with pytest.raises(MessageError, match=why):
        TrainsetRequest.parse(json.dumps(msg))


def test_continuations_and_requests_share_the_queue():
    assert isinstance(ts.parse_trainset_message(ISSUE_EXAMPLE), TrainsetRequest)
    cont = TrainsetContinue("birds-cls", "1", 7)
    assert ts.parse_trainset_message(cont.to_json()) == cont
    with pytest.raises(MessageError):
        ts.parse_trainset_message('{"kind": "trainset-continue", "v": 1, "name": "a", "version": "1"}')


def test_split_arguments_of_the_cli():
    assert ts.parse_split_arg("80/10/10") == {"train": 80, "val": 10, "test": 10}
    assert ts.parse_split_arg("100") == {"train": 100}
    assert ts.parse_split_arg("90/10/0") == {"train": 90, "val": 10}
    assert ts.parse_split_arg("a=30,b=70") == {"a": 30, "b": 70}
    with pytest.raises(MessageError):
        ts.parse_split_arg("80-20")


@given(md5s, st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_split_is_a_function_of_the_md5_alone_and_always_one_of_the_splits(md5, weights):
    pcts = [w * 100 // sum(weights) for w in weights]
    pcts[0] += 100 - sum(pcts)
    raw = {f"s{i}": p for i, p in enumerate(pcts) if p > 0}
    split = ts.parse_split(raw)
    got = ts.assign_split(md5, split)
    assert got in raw
    assert ts.assign_split(md5, split) == got  # deterministic
    # The bucket decides: the split whose range holds it, in sorted name order.
    lo = 0
    for name, pct in split:
        if name == got:
            assert lo <= ts.bucket_of(md5) < lo + pct
        lo += pct


def test_bucket_is_sha256_of_the_md5_bytes():
    md5 = hashlib.md5(b"x", usedforsecurity=False).hexdigest()
    expected = int.from_bytes(hashlib.sha256(bytes.fromhex(md5)).digest()[:8], "big") % 100
    assert ts.bucket_of(md5) == expected


def test_splits_are_roughly_proportional():
    split = ts.parse_split({"train": 80, "val": 10, "test": 10})
    got = [ts.assign_split(hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest(), split) for i in range(5000)]
    assert 0.77 < got.count("train") / 5000 < 0.83


@given(st.lists(st.sampled_from(["red", "Robin", "jay", "calm", "finch"]), max_size=5))
def test_labels_from_classes_are_exactly_one_or_reported(tags):
    classes = ("robin", "jay")
    outcome, labels = ts.assign_labels(tuple(tags), classes)
    have = {t.lower() for t in tags}
    matching = [c for c in classes if c in have]
    assert labels == tuple(matching)
    assert outcome == {0: LabelOutcome.NO_CLASS, 1: LabelOutcome.OK}.get(len(matching), LabelOutcome.SEVERAL_CLASSES)


def test_without_classes_an_image_carries_its_sets_tags():
    assert ts.assign_labels(("Red", "angry", "red"), None) == (LabelOutcome.OK, ("red", "angry"))


def entry(**kw) -> ManifestEntry:
    base = dict(
        container="birds",
        blob="transform/thumbnail/1/blue/calm/jay/v3/a.jpg",
        md5=mf.hex_to_b64("00" * 16),
        size=10240,
        width=256,
        height=192,
        domain="birds",
        path="blue/calm/jay",
        version="v3",
        transform=("thumbnail", "1"),
        source_blob="original/blue/calm/jay/v3/a.jpg",
        source_md5=mf.hex_to_b64("ff" * 16),
        labels=("jay",),
        split="train",
    )
    base.update(kw)
    return ManifestEntry(**base)  # type: ignore[arg-type]


def test_manifest_line_has_exactly_the_documented_fields_in_order():
    line = entry().to_line() + "\n"
    assert line.endswith("\n") and line.count("\n") == 1
    rec = json.loads(line)
    assert tuple(rec) == mf.MANIFEST_FIELDS
    assert rec["md5"] == base64.b64encode(bytes(16)).decode() and mf.b64_to_hex(rec["md5"]) == "00" * 16
    assert rec["source"] == {"blob": "original/blue/calm/jay/v3/a.jpg", "md5": base64.b64encode(b"\xff" * 16).decode()}
    assert rec["transform"] == {"name": "thumbnail", "version": "1"}
    assert json.loads(entry(transform=None).to_line())["transform"] is None


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\n" not in s and "\r" not in s))
def test_any_blob_name_stays_on_one_line(name):
    line = entry(blob=name).to_line() + "\n"
    assert line.count("\n") == 1 and mf.parse_line(line) == entry(blob=name) and json.loads(line)["blob"] == name


@given(st.lists(st.text(max_size=20), max_size=30), st.integers(1, 7))
def test_blocks_of_gzip_members_decompress_to_the_lines_and_hash_the_same(texts, per_block):
    lines = [json.dumps(t) + "\n" for t in texts]
    parts = ["".join(lines[i : i + per_block]) for i in range(0, len(lines), per_block)]
    blocks = [mf.gzip_member(p.encode()) for p in parts]
    whole = b"".join(blocks)
    raw = "".join(lines).encode()
    if whole:
        assert gzip.decompress(whole) == raw
    # Fed in arbitrary chunks, as a download arrives.
    chunks = [whole[i : i + 5] for i in range(0, len(whole), 5)]
    assert manifest_digest(iter(chunks)) == (hashlib.sha256(raw).hexdigest(), len(lines))


def test_gzip_blocks_are_deterministic():
    data = b'{"a":1}\n' * 100
    assert mf.gzip_member(data) == mf.gzip_member(data) == gzip.compress(data, compresslevel=6, mtime=0)
    assert mf.gzip_member(data)[4:8] == b"\0\0\0\0"  # no time in the header


def test_block_ids_have_one_length():
    assert {len(mf.block_id(i)) for i in (0, 9, 10, 49_999)} == {len(mf.block_id(0))}
    assert mf.block_id(1) != mf.block_id(10)


def test_refs():
    assert mf.parse_ref("birds-cls:1") == ("birds-cls", "1")
    with pytest.raises(MessageError):
        mf.parse_ref("birds-cls")
    with pytest.raises(MessageError):
        mf.parse_ref("a/b:1")


SAFE = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=8)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["birds", "cats"]), st.sampled_from(["original/a/v1/", "original/b/v1/", "transform/t/1/a/v1/"]), SAFE
        )
    )
)
def test_documented_order_is_plain_order_for_plain_names_and_prefix_free_sets(items):
    lines = [(c, prefix + f) for c, prefix, f in items]
    assert sorted(lines, key=lambda cb: mf.manifest_order_key(*cb)) == sorted(lines)


def test_documented_order_where_it_differs_from_plain_order():
    blobs = ["original/v2/B b.jpg", "original/v2/B-a.jpg", "original/v2/a.jpg", "original/v2/v1/x.jpg", "original/v2/zz.jpg"]
    documented = sorted(blobs, key=lambda b: mf.manifest_order_key("birds", b))
    assert documented == [
        "original/v2/B-a.jpg",
        "original/v2/B b.jpg",
        "original/v2/a.jpg",
        "original/v2/zz.jpg",
        "original/v2/v1/x.jpg",
    ]
    assert documented != sorted(blobs)


def test_too_many_distinct_labels_fail_the_build_with_a_reason_rather_than_an_oversized_row():
    from corpus.app.trainsets import _Counts
    from corpus.store.trainsets_table import BuildState

    few = _Counts(3, {"train": 3}, {"robin": 3}, {}, [])
    assert few.state(BuildState(step=4), ("birds", "original/a/v1/", "x.jpg"), 1).step == 5
    many = _Counts(5000, {"train": 5000}, {f"tag-number-{i}": 1 for i in range(5000)}, {}, [])
    with pytest.raises(MessageError, match=r"labels\.classes"):
        many.state(BuildState(), None, 1)


def test_the_reader_accepts_the_builders_documented_order_in_gzip_blocks():
    """iter_manifest (pull, exports, datasets) reads what the builder writes: documented order, one
    gzip member per block; plain (container, blob) order, which differs here, is refused."""
    blobs = ["original/v2/B b.jpg", "original/v2/B-a.jpg", "original/v2/a.jpg", "original/v2/v1/x.jpg", "original/v2/zz.jpg"]
    documented = sorted(blobs, key=lambda b: mf.manifest_order_key("birds", b))
    lines = [entry(blob=b, transform=None).to_line() + "\n" for b in documented]
    blocks = b"".join(mf.gzip_member("".join(lines[i : i + 2]).encode()) for i in range(0, len(lines), 2))
    assert [e.blob for e in mf.iter_manifest(io.BytesIO(blocks))] == documented
    assert mf.write_manifest([entry(blob=b, transform=None) for b in blobs]) == mf.gzip_member("".join(lines).encode())
    plain = mf.gzip_member("".join(entry(blob=b, transform=None).to_line() + "\n" for b in sorted(blobs)).encode())
    with pytest.raises(MessageError, match="out of order"):
        list(mf.iter_manifest(io.BytesIO(plain)))
    assert [x.decode() for x in mf.split_lines(mf.gunzip_chunks([blocks[i : i + 7] for i in range(0, len(blocks), 7)]))] == [
        line.rstrip("\n") for line in lines
    ]


def test_a_request_must_fit_a_queue_message_and_a_table_property_in_azure_units():
    def request(tag: str, n: int) -> str:
        sources = [{"domain": "birds", "tags": [f"{tag}{i}"], "version": "v1"} for i in range(n)]
        return json.dumps({"trainset": {"name": "big", "version": "1"}, "sources": sources})

    # 3-byte UTF-8 characters: under 32 K UTF-16 units, but the message would pass 48 KiB of UTF-8.
    with pytest.raises(MessageError, match="bytes, more than"):
        TrainsetRequest.parse(request("鳥" * 200, 100))
    # Characters outside the BMP count twice in Azure's 32 K-unit properties.
    with pytest.raises(MessageError, match="characters, more than"):
        TrainsetRequest.parse(request("🐦" * 200, 100))
    assert TrainsetRequest.parse(request("robin", 50)).name == "big"
