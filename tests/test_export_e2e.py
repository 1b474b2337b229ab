"""End to end on Azurite through ``corpus host``: exports a training loop uses as is (issue 22) and
the shard-job hardening of issue 25 (B1, R6), over one two-class training set of 64 small images.

Checked with the real readers: the documented ``webdataset`` pipeline, ``ShardDataset`` in a real
``DataLoader(num_workers=2)``, Hugging Face ``datasets.load_dataset("parquet", ...)``, and
``mlcroissant`` for ``croissant.json``.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from corpus.domain.exports import ExportParams, ExportRequest, ExportShardJob
from corpus.domain.layouts import KEEP_EXTENSIONS, class_order, label_key, sample_key
from corpus.domain.paths import SetRef
from tests.support import ingest, jpeg, run_cli, run_host
from tests.trainset_support import manifest_entries, write_trainset

pytestmark = pytest.mark.e2e

# Two jay sets that share camera file names, and robins: 64 small images.
FILES = (
    {f"birds/v1/blue/calm/jay/IMG_{i:04d}.jpg": jpeg(i, (32, 24)) for i in range(16)}
    | {f"birds/v1/blue/loud/jay/IMG_{i:04d}.jpg": jpeg(100 + i, (32, 24)) for i in range(16)}
    | {f"birds/v1/red/robin/IMG_{i:04d}.jpg": jpeg(200 + i, (32, 24)) for i in range(31)}
    | {"birds/v1/red/robin/odd.name.v2.JPEG": jpeg(300, (32, 24))}
)
SETS = [
    (SetRef("birds", ("blue", "calm", "jay"), "v1"), ["jay"]),
    (SetRef("birds", ("blue", "loud", "jay"), "v1"), ["jay"]),
    (SetRef("birds", ("red", "robin"), "v1"), ["robin"]),
]
SHARD = "56KB"  # ~11 samples of ~5 KB (image + tar headers + JSON) a shard


def collate(batch):
    """Samples as they are (module level: spawned workers unpickle it)."""
    return batch


def blobs(clients, prefix: str) -> dict[str, tuple[str, str]]:
    return {
        b.name: (b.etag, b.content_settings.content_md5.hex())
        for b in clients.container("exports").list_blobs(name_starts_with=prefix)
    }


def export(env, tmp_path, *args) -> subprocess.CompletedProcess[str]:
    return run_cli(env, tmp_path, "export", "birds:1", *args)


def test_exports_a_training_loop_uses_as_is(env, clients, app_dir, rt, settings, tmp_path):
    ingest(env, clients, app_dir, FILES)
    entries = manifest_entries(rt, SETS)
    assert len(entries) == 64
    write_trainset(rt, "birds", "1", entries)
    classes = class_order(label_key(e.labels) for e in entries)
    assert classes == ["jay", "robin"]
    by_key = {sample_key(e): e for e in entries}

    # --wait returns when the host has done it (exit 0); without it, the CLI says where to look.
    waiting = subprocess.Popen([sys.executable, "-m", "corpus", "export", "birds:1", "--format", "webdataset",
                                "--shard-size", SHARD, "--seed", "3", "--wait", "--timeout", "300"],
                               env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        queued = export(env, tmp_path, "--format", "parquet", "--shard-size", SHARD)
        assert queued.returncode == 0 and "croissant.json" in queued.stdout and "corpus export list" in queued.stdout
        assert export(env, tmp_path, "--format", "azureml").returncode == 0
        # With no host running yet, --wait says so after ~10 s without progress, and keeps waiting.
        watchdog = threading.Timer(120, waiting.kill)  # a deadline on the blocking read below
        watchdog.start()
        try:
            hint = waiting.stderr.readline() if waiting.stderr else ""
        finally:
            watchdog.cancel()
        assert "still queued" in hint and "A host must be running" in hint, hint
        summary = run_host(env, app_dir)
        out, err = waiting.communicate(timeout=300)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert out.startswith("done: exports/birds/1/webdataset-")
    assert not summary.get("failed"), summary

    exports = clients.container("exports")
    wds_id = ExportParams("webdataset", 56_000, seed=3).export_id()
    wds = f"birds/1/{wds_id}/"
    plan = json.loads(exports.download_blob(wds + "plan.json").readall())
    assert plan["classes"] == classes and plan["samples"] == 64 and plan["params"]["seed"] == 3
    assert exports.download_blob(wds + "classes.txt").readall() == b"jay\nrobin\n"

    # Every shard: each sample exactly one image member, a .cls and a .json; shards of >= 10 samples
    # hold both classes; every key exactly once across the export.
    seen: collections.Counter[str] = collections.Counter()
    local = tmp_path / "shards"
    urls: dict[str, list[str]] = collections.defaultdict(list)
    for sh in plan["shards"]:
        raw = exports.download_blob(wds + sh["file"]).readall()
        path = local / sh["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        urls[sh["split"]].append(str(path))
        members: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.rpartition(".")
                members[key][ext] = tar.extractfile(m).read()
        assert len(members) == sh["count"]
        labels = set()
        for key, parts in members.items():
            e = by_key[key]
            assert set(parts) == {"jpg", "cls", "json"}, (key, set(parts))  # .JPEG is written as .jpg
            assert hashlib.md5(parts["jpg"]).digest() == __import__("base64").b64decode(e.md5)
            assert int(parts["cls"]) == classes.index(label_key(e.labels))
            assert json.loads(parts["json"])["blob"] == e.blob and e.split == sh["split"]
            labels.add(e.labels[0])
            seen[key] += 1
        if sh["count"] >= 10:
            assert labels == {"jay", "robin"}, (sh["file"], labels)
    assert set(seen) == set(by_key) and set(seen.values()) == {1}
    assert max(sh["count"] for sh in plan["shards"]) >= 10

    # The documented webdataset pipeline yields every sample with its class.
    import webdataset as wds_lib

    got = collections.Counter()
    for split, paths in urls.items():
        pipeline = wds_lib.WebDataset(sorted(paths), shardshuffle=False).decode("pil").to_tuple(KEEP_EXTENSIONS, "cls", "json")
        for image, cls, meta in pipeline:
            assert image.size == (32, 24) and meta["split"] == split
            got[(meta["blob"], cls)] += 1
    assert got == collections.Counter((e.blob, classes.index(label_key(e.labels))) for e in entries)

    # ShardDataset in a real DataLoader(num_workers=2): (image, class_index), every train sample once.
    from corpus.dataset import ShardDataset

    want = collections.Counter((e.blob, classes.index(label_key(e.labels))) for e in entries if e.split == "train")
    ds = ShardDataset("birds", "1", split="train", shuffle=True, shuffle_buffer=8, return_meta=True, settings=settings)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        loaded = collections.Counter()
        for batch in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate):
            for sample in batch:
                loaded[(sample["blob"], sample["label"])] += 1
        assert loaded == want
    plain = ShardDataset("birds", "1", split="train", decode=False, settings=settings)
    first = next(iter(plain))
    assert isinstance(first, tuple) and isinstance(first[0], bytes) and first[1] in (0, 1)

    # Parquet: Hugging Face datasets reads Image + ClassLabel, counts per split and label.
    pq_id = ExportParams("parquet", 56_000).export_id()
    pq_prefix = f"birds/1/{pq_id}/"
    pq_plan = json.loads(exports.download_blob(pq_prefix + "plan.json").readall())
    data_files: dict[str, list[str]] = collections.defaultdict(list)
    for sh in pq_plan["shards"]:
        path = tmp_path / "pq" / sh["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(exports.download_blob(pq_prefix + sh["file"]).readall())
        data_files[sh["split"]].append(str(path))
    import datasets

    hf = datasets.load_dataset("parquet", data_files=dict(data_files), cache_dir=str(tmp_path / "hf-cache"))
    for split, part in hf.items():
        assert isinstance(part.features["image"], datasets.Image)
        assert part.features["label"].names == classes
        want_split = collections.Counter(classes.index(label_key(e.labels)) for e in entries if e.split == split)
        assert collections.Counter(part["label"]) == want_split
        assert part[0]["image"].size == (32, 24)
    assert sum(len(p) for p in hf.values()) == 64
    card = exports.download_blob(pq_prefix + "README.md").readall().decode()
    assert card.startswith("---\nconfigs:") and "class_label:" in card

    # croissant.json lists every file of the export with its correct SHA-256, and validates.
    import mlcroissant

    for prefix in (wds, pq_prefix, f"birds/1/{ExportParams('azureml').export_id()}/"):
        doc = json.loads(exports.download_blob(prefix + "croissant.json").readall())
        listed = {d["contentUrl"]: d["sha256"] for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
        files = [b.name for b in exports.list_blobs(name_starts_with=prefix)]
        data = {n[len(prefix) :] for n in files if not n.endswith("croissant.json") and "/_work/" not in n}
        assert set(listed) == data
        for rel, sha in listed.items():
            assert hashlib.sha256(exports.download_blob(prefix + rel).readall()).hexdigest() == sha, rel
        assert not mlcroissant.Dataset(jsonld=doc).metadata.issues.errors

    # Azure ML: one label type in the file (strings: every image has one label).
    az = f"birds/1/{ExportParams('azureml').export_id()}/"
    rows = [
        json.loads(x)
        for s in ("train", "val", "test")
        for x in exports.download_blob(f"{az}{s}/images.jsonl").readall().splitlines()
    ]
    assert len(rows) == 64 and {type(r["label"]) for r in rows} == {str}

    # The same export again: a no-op, byte for byte; duplicated and crafted shard jobs change nothing
    # (B1: the old message carrying its own window is refused; a job names only a shard of the plan).
    before = blobs(clients, "birds/1/")
    again = export(env, tmp_path, "--format", "webdataset", "--shard-size", SHARD, "--seed", "3")
    assert again.returncode == 0 and "already exported" in again.stdout
    q = clients.queue_client("export-requests")
    q.send_message(ExportRequest("birds", "1", ExportParams("webdataset", 56_000, seed=3)).to_json())
    crafted_v1 = {"kind": "export-shard", "v": 1, "trainset": {"name": "birds", "version": "1"}, "split": "train",
                  "index": 0, "start": 0, "count": 3, "shard_size": 56_000}  # fmt: skip
    q.send_message(json.dumps(crafted_v1))
    q.send_message(ExportShardJob("birds", "1", wds_id, "train", 0).to_json())
    q.send_message(ExportShardJob("birds", "1", wds_id, "train", 99).to_json())  # not in the plan
    run_host(env, app_dir, "--deliver-twice")
    assert blobs(clients, "birds/1/") == before
    listing = run_cli(env, tmp_path, "export", "list", "birds:1", "--json")
    assert sorted(r["state"] for r in json.loads(listing.stdout)) == ["done", "done", "done"]

    # Other parameters: a new export beside the first; a failure is reported by --wait (exit 1).
    other = export(env, tmp_path, "--format", "webdataset", "--shard-size", SHARD, "--seed", "4")
    assert other.returncode == 0
    run_host(env, app_dir)
    listing = json.loads(run_cli(env, tmp_path, "export", "list", "birds:1", "--json").stdout)
    assert [r["state"] for r in listing if r["export"].startswith("webdataset-")] == ["done", "done"]
    assert blobs(clients, wds) == {k: v for k, v in before.items() if k.startswith(wds)}
    victim = entries[0]
    kept = clients.container(victim.container).download_blob(victim.blob).readall()
    clients.container(victim.container).delete_blob(victim.blob)

    def export_and_wait() -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "corpus", "export", "birds:1", "--format", "webdataset", "--shard-size", "1MB",
               "--wait", "--timeout", "300"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            run_host(env, app_dir)
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    broken = export_and_wait()
    assert broken.returncode == 1 and victim.blob in broken.stderr, broken
    # Put right and asked again: the earlier failure does not stick; the export completes.
    clients.container(victim.container).upload_blob(victim.blob, kept)
    fixed = export_and_wait()
    assert fixed.returncode == 0 and fixed.stdout.startswith("done:"), fixed


def test_rules_files_are_where_the_docs_say():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "data-out.md").read_text()
    assert KEEP_EXTENSIONS in docs and '.decode("pil")' in docs and "az ml data create" in docs


class CollectingRuntime:
    """The export use case's runtime seam with the fan-out collected instead of queued."""

    def __init__(self, rt) -> None:
        self.settings, self.clients, self.blobs, self.sent = rt.settings, rt.clients, rt.blobs, []

    def send(self, queue: str, text: str) -> None:
        self.sent.append(text)

    def ensure_container(self, name: str) -> None:
        self.clients.ensure(containers=(name,))


def test_shard_jobs_read_only_their_work_list_never_the_manifest(env, clients, app_dir, rt, tmp_path):
    """Issue 25, R6: every shard job used to re-read the manifest from its start; now the manifest can
    be gone once the plan is written. B1: a work list changed behind the plan's back is refused."""
    from corpus.app.exports import ChangedBlobError, on_export_message
    from corpus.domain.exports import parse_export_message
    from corpus.domain.manifest import manifest_blob

    small = {k: v for k, v in FILES.items() if "IMG_000" in k}  # 30 images
    ingest(env, clients, app_dir, small)
    entries = manifest_entries(rt, SETS)
    write_trainset(rt, "birds", "1", entries)
    crt = CollectingRuntime(rt)
    req = ExportRequest("birds", "1", ExportParams("webdataset", 30_000))
    on_export_message(crt, req)
    jobs = [parse_export_message(t) for t in crt.sent]
    assert len(jobs) >= 4
    clients.container("trainsets").delete_blob(manifest_blob("birds", "1"))  # shard jobs must not need it
    exports = clients.container("exports")
    plan = json.loads(exports.download_blob(req.prefix + "plan.json").readall())
    tampered = plan["shards"][0]
    work = exports.download_blob(req.prefix + tampered["work"]).readall()
    exports.upload_blob(req.prefix + tampered["work"], work.splitlines()[0] + b"\n", overwrite=True)
    for job in jobs:
        if (job.split, job.index) == (tampered["split"], tampered["index"]):
            with pytest.raises(ChangedBlobError, match="MD5"):
                on_export_message(crt, job)
        else:
            on_export_message(crt, job)
    written = {b.name for b in exports.list_blobs(name_starts_with=req.prefix)}
    assert {req.prefix + sh["file"] for sh in plan["shards"] if sh is not tampered} <= written
    assert req.prefix + tampered["file"] not in written and req.prefix + "croissant.json" not in written
    assert req.prefix + "_work/failed.json" in written
