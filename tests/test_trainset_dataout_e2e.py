"""End to end: a training set made by the REAL builder, read by every way out of the corpus.

The data-out tests (test_pull_e2e.py, test_export_e2e.py) write their manifests with a test helper;
this one builds the training set through ``corpus host`` (queue ``trainset-requests``), with file
names whose documented manifest order differs from plain (container, blob) order (``"a b.jpg"``
escapes after ``"a-b.jpg"``) and a transformed source, then checks that ``corpus pull``, the
WebDataset export and ``TrainsetDataset`` in a real ``DataLoader(num_workers=2)`` each give exactly
the manifest's files, MD5s and labels; and that all three refuse a training set that is not ``ready``.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from azure.storage.blob import ContentSettings
from torch.utils.data import DataLoader

from corpus.domain.errors import NotFoundError
from corpus.domain.exports import ExportParams, ExportRequest
from corpus.domain.layouts import class_order, label_key, sample_key
from corpus.domain.manifest import ManifestEntry, iter_manifest, manifest_blob, manifest_order_key
from corpus.store.trainsets_table import BUILDING, TrainsetRow, TrainsetStore
from tests.support import jpeg, run_cli, run_host

pytestmark = pytest.mark.e2e

ROBIN, JAY = "red/robin", "blue/jay"
FILES = (
    {f"birds/v1/{ROBIN}/r{i}.jpg": jpeg(i, (64, 48)) for i in range(5)}
    | {f"birds/v1/{ROBIN}/a b.jpg": jpeg(10, (64, 48)), f"birds/v1/{ROBIN}/a-b.jpg": jpeg(11, (64, 48))}
    | {f"birds/v1/{JAY}/j{i}.jpg": jpeg(20 + i, (64, 48)) for i in range(4)}
    | {f"birds/v1/{JAY}/x y.jpg": jpeg(30, (64, 48))}
)
REQUEST = {
    "trainset": {"name": "birds-cls", "version": "1"},
    "sources": [
        {"domain": "birds", "tags": ["robin"], "version": "v1"},
        {"domain": "birds", "path": JAY, "version": "v1", "transform": {"name": "thumbnail", "version": "1"}},
    ],
    "labels": {"classes": ["robin", "jay"]},
    "split": {"train": 60, "val": 40},
}


def collate(batch):
    """Samples as they are (module level: workers unpickle it)."""
    return batch


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read_manifest(clients, name: str = "birds-cls", version: str = "1") -> list[ManifestEntry]:
    data = clients.container("trainsets").get_blob_client(manifest_blob(name, version)).download_blob().readall()
    return list(iter_manifest(io.BytesIO(data)))


def tree(root: Path) -> collections.Counter[tuple[str, str, str]]:
    """(split, label folder, MD5 hex) of every file of an imagefolder pull, the name map excluded."""
    out: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for dirpath, _, files in os.walk(root):
        for f in files:
            rel = Path(dirpath, f).relative_to(root)
            if rel.as_posix() == ".corpus-names.jsonl":
                continue
            assert len(rel.parts) == 3, rel
            out[(rel.parts[0], rel.parts[1], md5_hex(Path(dirpath, f).read_bytes()))] += 1
    return out


@pytest.fixture
def built(env, clients, app_dir, tmp_path):
    """Ingest, thumbnail the jays, build the training set with the real builder; its manifest entries."""
    st = clients.container("staging")
    for name, data in FILES.items():
        st.upload_blob(name, data, content_settings=ContentSettings(content_type="image/jpeg"))
    run_host(env, app_dir)
    thumbs = {"domain": "birds", "source": {"path": JAY, "version": "v1"},
              "transform": {"name": "thumbnail", "version": "1", "args": {"size": 16}}}  # fmt: skip
    clients.queue_client("transform-requests").send_message(json.dumps(thumbs))
    run_host(env, app_dir)
    clients.queue_client("trainset-requests").send_message(json.dumps(REQUEST))
    run_host(env, app_dir)
    show = run_cli(env, tmp_path, "trainset", "show", "birds-cls:1", "--json")
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["status"] == "ready"
    entries = read_manifest(clients)  # iter_manifest checks the documented order
    assert len(entries) == len(FILES)
    blobs = [e.blob for e in entries if e.container == "birds"]
    assert blobs == sorted(blobs, key=lambda b: manifest_order_key("birds", b)) != sorted(blobs)
    assert {e.split for e in entries} == {"train", "val"}
    return entries


def test_pull_export_and_dataloader_read_exactly_the_real_manifest(env, clients, app_dir, settings, tmp_path, built):
    entries = built
    # Every manifest MD5 is the stored blob's.
    for e in entries:
        props = clients.container(e.container).get_blob_client(e.blob).get_blob_properties()
        assert bytes(props.content_settings.content_md5).hex() == e.md5_hex

    # corpus pull, imagefolder: DEST/<split>/<label>/<file>, exactly the manifest's files.
    dest = tmp_path / "pulled"
    proc = run_cli(env, tmp_path, "pull", "birds-cls:1", str(dest), "--json")
    assert proc.returncode == 0, proc.stderr
    want = collections.Counter((e.split, label_key(e.labels), e.md5_hex) for e in entries)
    assert tree(dest) == want

    # corpus export --format webdataset: every manifest entry's key exactly once, MD5s match.
    proc = run_cli(env, tmp_path, "export", "birds-cls:1", "--format", "webdataset", "--shard-size", "16KiB")
    assert proc.returncode == 0, proc.stderr
    summary = run_host(env, app_dir)
    assert not summary.get("failed"), summary
    exports = clients.container("exports")
    prefix = f"birds-cls/1/{ExportParams('webdataset', 16 * 1024).export_id()}/"
    plan = json.loads(exports.get_blob_client(prefix + "plan.json").download_blob().readall())
    assert len(plan["shards"]) >= 2
    by_key = {sample_key(e): e for e in entries}
    seen: collections.Counter[str] = collections.Counter()
    for shard in plan["shards"]:
        data = exports.get_blob_client(prefix + shard["file"]).download_blob().readall()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        for name, body in members.items():
            if not name.endswith(".json"):
                continue
            key = name.removesuffix(".json")
            seen[key] += 1
            e = by_key[key]
            meta = json.loads(body)
            assert meta["split"] == e.split == shard["split"] and meta["labels"] == list(e.labels)
            image = next(
                b for n, b in members.items() if n.rpartition(".")[0] == key and n.rpartition(".")[2] not in ("json", "cls")
            )
            assert int(members[key + ".cls"]) == plan["classes"].index(label_key(e.labels))
            assert md5_hex(image) == e.md5_hex
    assert seen == collections.Counter(list(by_key))  # every key exactly once

    # TrainsetDataset in a real DataLoader with two workers: every sample once, the manifest's labels.
    from corpus.dataset import TrainsetDataset

    ds = TrainsetDataset("birds-cls", "1", return_meta=True, settings=settings)
    assert ds.classes == class_order(label_key(e.labels) for e in entries)
    got: collections.Counter[tuple[str, int, tuple[str, ...], str]] = collections.Counter()
    for batch in DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate, shuffle=True):
        for s in batch:
            got[(s["blob"], s["label"], tuple(s["labels"]), s["split"])] += 1
    assert got == collections.Counter((e.blob, ds.classes.index(label_key(e.labels)), e.labels, e.split) for e in entries)


def test_pull_export_and_dataset_refuse_a_training_set_that_is_not_ready(env, clients, app_dir, settings, tmp_path, built):
    from corpus.dataset import TrainsetDataset

    # A failed build (selects no image) and a row still building whose manifest blob exists.
    bad = {"trainset": {"name": "empty", "version": "1"}, "sources": [{"domain": "birds", "tags": ["nosuch"]}]}
    clients.queue_client("trainset-requests").send_message(json.dumps(bad))
    run_host(env, app_dir)
    data = clients.container("trainsets").get_blob_client(manifest_blob("birds-cls", "1")).download_blob().readall()
    clients.container("trainsets").upload_blob(manifest_blob("half", "1"), data)
    assert gzip.decompress(data)
    TrainsetStore(clients).trainsets.create(
        TrainsetRow("half", "1", "{}", status=BUILDING, manifest_container="trainsets", manifest_blob=manifest_blob("half", "1"))
    )
    for ref, status in (("empty:1", "failed"), ("half:1", "building"), ("nope:1", "no training set")):
        pulled = run_cli(env, tmp_path, "pull", ref, str(tmp_path / ref.replace(":", "-")))
        exported = run_cli(env, tmp_path, "export", ref, "--format", "webdataset")
        for proc in (pulled, exported):
            assert proc.returncode != 0 and status in proc.stderr, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / ref.replace(":", "-")).exists() or not any((tmp_path / ref.replace(":", "-")).rglob("*.jpg"))
        with pytest.raises(NotFoundError, match=status):
            TrainsetDataset(*ref.split(":"), settings=settings)
    # The export job refuses it too (a message sent behind the CLI's back), writing nothing.
    clients.queue_client("export-requests").send_message(ExportRequest("half", "1", ExportParams("webdataset")).to_json())
    run_host(env, app_dir)
    report = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    assert any("half:1 is building, not ready" in f["Reason"] for f in report["failures"]["latest"]), report["failures"]
    # Nothing is written but the failure that `corpus export --wait` and `export list` show.
    written = [b.name for b in clients.container("exports").list_blobs(name_starts_with="half/")]
    assert [n.rpartition("/_work/")[2] for n in written] == ["failed.json"]
