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
from corpus.domain.exports import ExportParams, ExportRequest, ExportShardJob, parse_export_message
from corpus.domain.layouts import (
    MAX_COMPONENT_BYTES,
    SAMPLE_OVERHEAD,
    WINDOWS_DEVICE_NAMES,
    azureml_line,
    azureml_multilabel,
    class_folder,
    class_order,
    label_key,
    local_paths,
    permutation,
    plan_split,
    safe_component,
    sample_key,
    sample_members,
)
from corpus.domain.manifest import ManifestEntry, iter_manifest, parse_line, parse_ref, write_manifest


def entry(
    blob: str, container: str = "birds", size: int = 100, labels=("robin",), split: str = "train", path: str = "red/robin"
) -> ManifestEntry:
    md5 = base64.b64encode(hashlib.md5(blob.encode()).digest()).decode()
    return ManifestEntry(container, blob, md5, size, 4, 3, container, path, "v1", None, blob, md5, tuple(labels), split)


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
    assert s.name.split(".")[0].rstrip(" ").casefold() not in WINDOWS_DEVICE_NAMES
    if not s.lossy:
        assert unquote(s.name) == name


def test_safe_component_examples():
    assert safe_component("a.jpg").name == "a.jpg" and not safe_component("a.jpg").changed
    assert safe_component("a:b.jpg").name == "a%3Ab.jpg"
    assert safe_component("CON.jpg").name == "%43ON.jpg"
    assert safe_component("x.").name == "x%2E"
    assert safe_component("100%.jpg").name == "100%25.jpg"
    # Issue 25, R13: every device name Windows reserves, from the one list, superscripts and consoles included.
    for device in ("COM¹", "com².jpg", "LPT³", "CONIN$", "conout$.png", "CLOCK$", "nul .txt", "COM0"):
        got = safe_component(device)
        assert got.changed and got.name.startswith("%") and unquote(got.name) == device, device
    long = safe_component("é" * 300 + ".jpg")
    assert long.lossy and long.name.endswith(".jpg") and len(long.name.encode()) <= MAX_COMPONENT_BYTES


@given(
    st.lists(
        st.sampled_from(["a.jpg", "A.jpg", "b.JPG", "B.jpg", "a:b.jpg", "a%3Ab.jpg", "con.png", "x"]), min_size=1, max_size=8
    )
)
def test_local_paths_are_unique_up_to_case_in_both_layouts(files):
    entries = [entry(f"original/d{i % 2}/{f}", labels=("robin",) if i % 3 else ("jay", "robin"), path=f"d{i % 2}")
               for i, f in enumerate(files)]  # fmt: skip
    entries = list({e.blob: e for e in entries}.values())
    for layout in ("imagefolder", "corpus"):
        paths = local_paths(entries, layout)
        assert len({p.rel.casefold() for p in paths}) == len(entries)
        assert paths == local_paths(entries, layout)
    folder = local_paths(entries, "imagefolder")
    assert all(p.rel.split("/")[1] in ("robin", "jay+robin") and p.rel.startswith("train/") for p in folder)


def test_pulled_names_are_readable_and_renamed_only_on_true_collisions():
    """Issue 22: camera names repeat across sets; the set path keeps them apart, nothing renamed."""
    entries = [entry(f"original/{p}/v1/IMG_0000.jpg", path=p, labels=("jay",)) for p in ("blue/calm/jay", "blue/loud/jay")]
    paths = local_paths(entries, "imagefolder")
    assert [p.rel for p in paths] == ["train/jay/blue_calm_jay__IMG_0000.jpg", "train/jay/blue_loud_jay__IMG_0000.jpg"]
    assert not any(p.changed for p in paths)


def test_a_rename_never_lands_on_a_real_files_name():
    """Issue 25, B2: 'a.jpg' and 'A.jpg' collide; a real file already has the first rename's name."""
    pair = [entry("original/s/v1/a.jpg", path="s"), entry("original/s/v1/A.jpg", path="s")]
    first = local_paths(pair, "imagefolder")
    squatter = first[0].rel.rpartition("/")[2].removeprefix("s__")
    entries = [*pair, entry(f"original/s/v1/{squatter}", path="s")]
    paths = local_paths(entries, "imagefolder")
    assert len({p.rel.casefold() for p in paths}) == 3
    assert paths[2].rel == f"train/robin/s__{squatter}" and not paths[2].changed  # the real file keeps its name


def test_class_indices_agree_with_imagefolder_over_encoded_folder_names():
    """Issue 25, B3: ImageFolder indexes sorted folder names; class_order gives the same indices."""
    names = ["con", "100%", "a:b", "a+b", "COM¹", "jay", "Zeta", "_unlabeled"]
    ordered = class_order(names)
    folders = sorted(class_folder(c) for c in names)  # what ImageFolder's os.scandir + sort sees
    assert [class_folder(c) for c in ordered] == folders
    assert class_order(["robin", "jay"]) == ["jay", "robin"]  # plain names: plain sorted order


def test_label_key():
    assert label_key(["robin"]) == "robin" and label_key(["robin", "jay"]) == "jay+robin" and label_key([]) == "_unlabeled"


@given(st.lists(st.tuples(st.integers(0, 50_000), st.sampled_from(["train", "val"])), max_size=80), st.integers(20_000, 200_000),
       st.integers(0, 3))  # fmt: skip
def test_mixed_shards_cover_each_split_exactly_once_within_the_size(items, shard_bytes, seed):
    for split in ("train", "val"):
        sizes = [size for size, s in items if s == split]
        plan = plan_split(split, sizes, shard_bytes, seed)
        assert plan == plan_split(split, sizes, shard_bytes, seed)  # deterministic
        assert sorted(plan.order) == list(range(len(sizes)))  # a permutation
        covered = [p for k in range(plan.shards) for p in range(plan.starts[k], plan.starts[k] + plan.count(k))]
        assert covered == list(range(len(sizes)))
        pos = plan.positions()
        for k in range(plan.shards):
            members = [plan.order[p] for p in range(plan.starts[k], plan.starts[k] + plan.count(k))]
            assert all(plan.shard_of(pos[o]) == k for o in members)
            assert len(members) == 1 or sum(sizes[o] + SAMPLE_OVERHEAD for o in members) <= shard_bytes


def test_shards_of_a_class_sorted_manifest_hold_the_class_mix():
    """Issue 22: the manifest is in class order; shards of >= 10 samples must each hold both classes."""
    sizes = [3000] * 60
    labels = ["jay"] * 30 + ["robin"] * 30
    for seed in range(20):
        plan = plan_split("train", sizes, 10 * (3000 + SAMPLE_OVERHEAD), seed)
        assert plan.shards == 6
        for k in range(plan.shards):
            held = {labels[plan.order[p]] for p in range(plan.starts[k], plan.starts[k] + plan.count(k))}
            assert held == {"jay", "robin"}, (seed, k)
    assert list(permutation(10, 1, "train")) != list(permutation(10, 2, "train"))
    assert list(permutation(10, 1, "train")) == list(permutation(10, 1, "train"))


def test_sample_members_one_image_a_class_and_the_json():
    e = entry("original/red/robin/v1/IMG.JPEG")
    key = sample_key(e)
    assert sample_members(e, key) == (f"{key}.jpg", f"{key}.cls", f"{key}.json")
    assert sample_members(e, key, "png")[0] == f"{key}.png"


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
    line = json.loads(azureml_line(entry("original/a.png"), "https://x/birds/original/a.png", False))
    assert line == {
        "image_url": "https://x/birds/original/a.png",
        "image_details": {"format": "png", "width": "4px", "height": "3px"},
        "label": "robin",
    }
    assert json.loads(azureml_line(entry("original/a.png", labels=("a", "b")), "u", True))["label"] == ["a", "b"]
    # Issue 25, R14: one label type per export: lists for every line as soon as one image has != 1 labels.
    assert not azureml_multilabel([1, 1]) and azureml_multilabel([1, 0]) and azureml_multilabel([1, 2])
    assert json.loads(azureml_line(entry("original/a.png"), "u", True))["label"] == ["robin"]
    assert json.loads(azureml_line(entry("original/a.png", labels=()), "u", True))["label"] == []


def test_export_messages_round_trip_and_refuse_bad_input():
    req = ExportRequest("birds-cls", "1", ExportParams("webdataset", 40_000, seed=7, image_format="jpg"))
    assert parse_export_message(req.to_json()) == req
    job = ExportShardJob("birds-cls", "1", req.export_id, "train", 3)
    assert parse_export_message(job.to_json()) == job
    for bad in (
        req.to_json().replace("webdataset", "zip"),
        req.to_json().replace("40000", "10"),
        req.to_json().replace('"jpg"', '"gif"'),
        job.to_json().replace('"index": 3', '"index": -1'),
        job.to_json().replace(req.export_id, "../x"),
        # Issue 25, B1: the old shard job carried its own window; nothing of it is accepted any more.
        '{"kind": "export-shard", "v": 1, "trainset": {"name": "b", "version": "1"}, "split": "train", "index": 0,'
        ' "start": 0, "count": 3, "shard_size": 40000}',
        '{"kind": "export", "v": 1, "trainset": {"name": "a/b", "version": "1"}, "format": "azureml"}',
    ):
        with pytest.raises(MessageError):
            parse_export_message(bad)


def test_exports_are_keyed_by_their_canonical_parameters():
    a = ExportParams("webdataset", 40_000, seed=1)
    assert a.export_id() == ExportParams("webdataset", 40_000, seed=1).export_id()
    assert a.export_id().startswith("webdataset-") and len(a.digest()) == 8
    others = {
        ExportParams("webdataset", 40_000, seed=2),
        ExportParams("webdataset", 50_000, seed=1),
        ExportParams("webdataset", 40_000, seed=1, image_format="png"),
        ExportParams("parquet", 40_000, seed=1),
    }
    assert len({o.export_id() for o in others} | {a.export_id()}) == 5
    # Parameters a format ignores do not make a new export.
    assert ExportParams("azureml", seed=1).export_id() == ExportParams("azureml", seed=2).export_id()
    assert ExportParams("azureml", datastore="x").export_id() != ExportParams("azureml").export_id()


def test_parse_size():
    assert parse_size("500MB") == 500_000_000 and parse_size("1GiB") == 2**30 and parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


@pytest.mark.parametrize("fmt", ["webdataset", "parquet", "azureml"])
def test_croissant_validates_with_mlcroissant(fmt):
    mlc = pytest.importorskip("mlcroissant", reason="mlcroissant is in the dev extra")
    from corpus.domain.datacards import ExportFile, croissant

    files = {
        "webdataset": ["train/shard-000000.tar", "train/shard-000000.index.json"],
        "parquet": ["data/train-00000-of-00001.parquet", "README.md"],
        "azureml": ["train/images.jsonl", "train/MLTable"],
    }[fmt] + ["classes.txt", "plan.json"]
    doc = croissant(name="b", version="1", export_id=f"{fmt}-12345678", fmt=fmt,
                    files=[ExportFile(f, 10, "ab" * 32) for f in files], splits=["train", "val"],
                    classes=["jay", "robin"], samples=3)  # fmt: skip
    ds = mlc.Dataset(jsonld=doc)
    assert not ds.metadata.issues.errors
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    assert {d["contentUrl"]: d["sha256"] for d in doc["distribution"] if d["@type"] == "cr:FileObject"} == {
        f: "ab" * 32 for f in files
    }


def test_image_format_reencodes_only_what_is_not_already_in_that_format():
    from PIL import Image

    from corpus.app.exports import _image_bytes

    jpg = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(jpg, "JPEG")
    e = entry("original/a.jpg")
    assert _image_bytes(e, jpg.getvalue(), "keep") == jpg.getvalue()
    assert _image_bytes(e, jpg.getvalue(), "jpg") == jpg.getvalue()
    png = _image_bytes(e, jpg.getvalue(), "png")
    assert png == _image_bytes(e, jpg.getvalue(), "png")  # deterministic
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (8, 6)
    assert sample_members(e, "k", "png")[0] == "k.png"


@given(
    st.lists(
        st.tuples(st.sampled_from(["a.jpg", "A.jpg", "b.JPG", "a:b.jpg", "con.png", "IMG_0001.jpg"]),
                  st.sampled_from(["red/robin", "red", "blue/jay"]), st.sampled_from(["train", "val"])),
        min_size=1, max_size=10,
    )
)  # fmt: skip
def test_the_pulls_on_disk_name_index_gives_the_in_memory_names(items):
    """Issue 25, R7: pull keeps its collision counts in SQLite, not memory; same names as local_paths."""
    from corpus.pull.names import NameIndex

    entries = list({e.blob: e for e in (entry(f"original/{p}/v1/{f}", path=p, split=s) for f, p, s in items)}.values())
    for layout in ("imagefolder", "corpus"):
        names = NameIndex(layout)
        try:
            for e in entries:
                names.add(e)
            assert [names.local_path(e) for e in entries] == local_paths(entries, layout)
        finally:
            names.close()
