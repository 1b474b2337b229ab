"""End to end on Azurite through ``corpus host``: WebDataset and Azure ML exports, and the PyTorch
datasets over a training set and over its shards, read by a real ``DataLoader(num_workers=2)``."""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import json
import tarfile

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from corpus.domain.exports import ExportRequest
from corpus.domain.layouts import label_key, sample_key
from corpus.domain.paths import SetRef
from tests.support import ingest, jpeg, run_cli, run_host
from tests.trainset_support import manifest_entries, write_trainset

pytestmark = pytest.mark.e2e


FILES = (
    {f"birds/v1/red/robin/{i}.jpg": jpeg(i, (160, 120), quality=95) for i in range(12)}
    | {f"birds/v1/blue/jay/{i}.jpg": jpeg(50 + i, (160, 120), quality=95) for i in range(10)}
    | {"birds/v1/blue/jay/odd.name.v2.jpg": jpeg(90, (160, 120))}
)
SETS = [(SetRef("birds", ("red", "robin"), "v1"), ["robin"]), (SetRef("birds", ("blue", "jay"), "v1"), ["jay"])]


@pytest.fixture
def trainset(env, clients, app_dir, rt):
    ingest(env, clients, app_dir, FILES)
    entries = manifest_entries(rt, SETS)
    assert len(entries) == 23
    write_trainset(rt, "birds-cls", "1", entries)
    return entries


def collate(batch):
    """Samples as they are (a module-level function: spawned workers unpickle it)."""
    return batch


def export_blobs(clients, prefix: str) -> dict[str, tuple[str, str]]:
    return {b.name: (b.etag, str(b.last_modified)) for b in clients.container("exports").list_blobs(name_starts_with=prefix)}


def test_webdataset_and_azureml_exports(env, clients, app_dir, rt, tmp_path, trainset):
    out = run_cli(env, tmp_path, "export", "birds-cls:1", "--format", "webdataset", "--shard-size", "40KB")
    assert out.returncode == 0, out.stderr
    assert run_cli(env, tmp_path, "export", "birds-cls:1", "--format", "azureml").returncode == 0
    summary = run_host(env, app_dir)
    assert not summary.get("failed"), run_cli(env, tmp_path, "status").stdout[-3000:]

    # WebDataset: several shards; every key exactly once across them, its bytes' MD5 the manifest's.
    exports = clients.container("exports")
    plan = json.loads(exports.download_blob("birds-cls/1/webdataset/plan.json").readall())
    assert len(plan["shards"]) >= 4 and plan["samples"] == 23 and plan["classes"] == ["jay", "robin"]
    seen: collections.Counter[str] = collections.Counter()
    by_key = {sample_key(e): e for e in trainset}
    for shard in plan["shards"]:
        raw = exports.download_blob(shard["tar"]).readall()
        index = json.loads(exports.download_blob(shard["tar"].removesuffix(".tar") + ".index.json").readall())
        assert index["md5"] == base64.b64encode(hashlib.md5(raw).digest()).decode()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            members = tar.getmembers()
            assert all((m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644) for m in members)
            for m in members:
                key, _, ext = m.name.rpartition(".")
                body = tar.extractfile(m).read()
                if ext == "json":
                    meta = json.loads(body)
                    e = by_key[key]
                    assert meta["__key__"] == key and meta["blob"] == e.blob and meta["split"] == shard["split"] == e.split
                    assert meta["labels"] == list(e.labels) and meta["md5"] == e.md5
                else:
                    seen[key] += 1
                    assert base64.b64encode(hashlib.md5(body).digest()).decode() == by_key[key].md5
                    # The index gives the member's offset: one sample by a range request.
                    offset, size = index["samples"][key][ext]
                    ranged = exports.get_blob_client(shard["tar"]).download_blob(offset=offset, length=size).readall()
                    assert ranged == body
    assert set(seen) == set(by_key) and set(seen.values()) == {1}
    odd = next(k for k in by_key if "odd" in k)
    assert "." not in odd.rpartition("/")[2]  # WebDataset cuts keys at the first dot

    # Azure ML: one JSONL line per image with the documented fields, an MLTable beside each that parses.
    lines = []
    for split in sorted({e.split for e in trainset}):
        body = exports.download_blob(f"birds-cls/1/azureml/{split}/images.jsonl").readall().decode()
        rows = [json.loads(line) for line in body.splitlines()]
        assert all(set(r) == {"image_url", "image_details", "label"} for r in rows)
        lines += rows
        table = yaml.safe_load(exports.download_blob(f"birds-cls/1/azureml/{split}/MLTable").readall())
        assert table["paths"] == [{"file": "./images.jsonl"}]
        assert table["transformations"][1]["convert_column_types"][0]["column_type"] == "stream_info"
    assert len(lines) == 23
    urls = {r["image_url"]: r for r in lines}
    for e in trainset:
        row = next(r for u, r in urls.items() if u.endswith(e.blob))
        assert row["label"] == e.labels[0] and row["image_details"]["width"] == f"{e.width}px"

    # A duplicated request and duplicated shard jobs change no byte (no blob is even rewritten).
    before = export_blobs(clients, "birds-cls/1/")
    q = clients.queue_client("export-requests")
    q.send_message(ExportRequest("birds-cls", "1", "webdataset", 40_000).to_json())
    q.send_message(ExportRequest("birds-cls", "1", "azureml").to_json())
    again = run_host(env, app_dir, "--deliver-twice")
    assert again["ok"]["export_request"] >= 2 * (2 + len(plan["shards"]))
    assert not again.get("failed"), again
    assert export_blobs(clients, "birds-cls/1/") == before


def test_dataloaders_over_both_datasets_yield_every_sample_once(env, clients, app_dir, rt, settings, tmp_path, trainset):
    from corpus.dataset import ShardDataset, TrainsetDataset

    assert run_cli(env, tmp_path, "export", "birds-cls:1", "--format", "webdataset", "--shard-size", "40KB").returncode == 0
    run_host(env, app_dir)
    classes = sorted({label_key(e.labels) for e in trainset})
    want = collections.Counter((e.blob, classes.index(label_key(e.labels))) for e in trainset if e.split == "train")
    assert sum(want.values()) >= 8

    def epoch(ds, **kw):
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, **kw)
        got = collections.Counter()
        for batch in loader:
            for sample in batch:
                assert sample["image"].size == (sample["width"], sample["height"])
                assert sample["md5"] == next(e.md5 for e in trainset if e.blob == sample["blob"])
                got[(sample["blob"], sample["label"])] += 1
        return got

    maps = TrainsetDataset("birds-cls", "1", split="train", return_meta=True, settings=settings)
    assert len(maps) == sum(want.values()) and maps.classes == classes
    assert epoch(maps, shuffle=True) == want
    shards = ShardDataset("birds-cls", "1", split="train", return_meta=True, settings=settings)
    assert len(shards.shards) >= 2
    assert epoch(shards) == want
    assert epoch(shards) == want  # a second epoch: every sample once again
    mixed = ShardDataset("birds-cls", "1", split="train", return_meta=True, shuffle=True, shuffle_buffer=4, settings=settings)
    mixed.set_epoch(1)
    assert epoch(mixed) == want  # shuffled shards and samples: still each exactly once
    # spawn: the datasets pickle without clients and rebuild them in the worker.
    assert epoch(maps, multiprocessing_context="spawn") == want

    # (image, label) tuples with a transform, through the default collate.
    plain = TrainsetDataset("birds-cls", "1", split="train", transform=lambda im: torch.tensor(im.size), settings=settings)
    images, labels = next(iter(DataLoader(plain, batch_size=len(plain), num_workers=2)))
    assert images.tolist() == [[160, 120]] * len(plain) and sorted(labels.tolist()) == sorted(lab for _, lab in want.elements())

    # MD5 verified on read: a blob changed behind the corpus's back is named.
    from corpus.dataset import IntegrityError

    victim = next(e for e in maps.entries)
    clients.container("birds").upload_blob(victim.blob, jpeg(999), overwrite=True)
    with pytest.raises(IntegrityError, match=victim.blob):
        maps[0]
    unchecked = TrainsetDataset("birds-cls", "1", split="train", verify_md5=False, settings=settings)
    assert unchecked[0][1] == classes.index(label_key(victim.labels))
