"""End to end: training sets, models and lineage through ``corpus host`` and the CLI on Azurite."""

from __future__ import annotations

import gzip
import hashlib
import json
import signal
import subprocess

import pytest

from corpus.domain import manifest as mf
from corpus.domain import trainsets as ts
from tests.support import host_command, ingest, jpeg, run_cli, run_host, wait_for

pytestmark = pytest.mark.e2e

ROBIN, JAY, BOTH, FINCH = "red/angry/robin", "blue/calm/jay", "red/jay/robin", "red/finch"


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def thumbnails(env, clients, app_dir, path: str) -> None:
    req = {
        "domain": "birds",
        "source": {"path": path, "version": "v3"},
        "transform": {"name": "thumbnail", "version": "1", "args": {"size": 16}},
    }
    clients.queue_client("transform-requests").send_message(json.dumps(req))
    run_host(env, app_dir)


def cli(env, cwd, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, cwd, *args)


def ok_json(env, cwd, *args: str):
    proc = cli(env, cwd, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def manifest_bytes(clients, name: str, version: str = "1") -> bytes:
    return clients.container("trainsets").get_blob_client(mf.manifest_blob(name, version)).download_blob().readall()


def manifest_records(clients, name: str, version: str = "1") -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(manifest_bytes(clients, name, version)).decode().splitlines()]


SOURCES = [
    {"domain": "birds", "tags": ["red"], "version": "v3"},
    {"domain": "birds", "path": JAY, "version": "v3", "transform": {"name": "thumbnail", "version": "1"}},
    {"domain": "birds", "path": ROBIN, "version": "v3", "transform": {"name": "thumbnail", "version": "1"}},
]


def corpus_files() -> dict[str, bytes]:
    files = {f"birds/v3/{ROBIN}/r{i:02d}.jpg": jpeg(100 + i) for i in range(12)}
    files |= {f"birds/v3/{JAY}/j{i:02d}.jpg": jpeg(200 + i) for i in range(8)}
    files |= {f"birds/v3/{BOTH}/b{i}.jpg": jpeg(300 + i) for i in range(2)}
    files |= {f"birds/v3/{FINCH}/f{i}.jpg": jpeg(400 + i) for i in range(2)}
    return files


def test_create_lineage_verify_and_immutability(env, clients, app_dir, tmp_path):
    files = corpus_files()
    ingest(env, clients, app_dir, files)
    thumbnails(env, clients, app_dir, JAY)
    thumbnails(env, clients, app_dir, ROBIN)
    src = tmp_path / "sources.json"
    src.write_text(json.dumps(SOURCES))
    create = ["trainset", "create", "--name", "birds-cls", "--version", "1", "--from", str(src), "--classes", "robin,jay"]
    create += ["--split", "80/10/10"]
    assert cli(env, tmp_path, *create).returncode == 0
    run_host(env, app_dir)

    show = ok_json(env, tmp_path, "trainset", "show", "birds-cls:1")
    # 12 robin originals + their 12 thumbnails + 8 jay thumbnails; red/jay/robin matches both
    # classes, red/finch neither: reported, not in the manifest.
    assert (show["status"], show["images"]) == ("ready", 32)
    assert show["labels"] == {"jay": 8, "robin": 24}
    assert show["skipped"] == {"no-class": 2, "several-classes": 2}
    assert sorted(show["skipped_examples"]) == sorted(
        [f"no-class: birds/original/{FINCH}/v3/f{i}.jpg" for i in range(2)]
        + [f"several-classes: birds/original/{BOTH}/v3/b{i}.jpg" for i in range(2)]
    )
    originals = {f"original/{k.split('/', 2)[2].rsplit('/', 1)[0]}/v3/{k.rsplit('/', 1)[1]}": md5(v) for k, v in files.items()}
    split = ts.parse_split({"train": 80, "val": 10, "test": 10})
    expected_splits: dict[str, int] = {}
    for blob, digest in originals.items():
        if blob.startswith((f"original/{ROBIN}/", f"original/{JAY}/")):
            n = 2 if ROBIN in blob else 1  # robin: original and thumbnail; jay: thumbnail only
            expected_splits[ts.assign_split(digest, split)] = expected_splits.get(ts.assign_split(digest, split), 0) + n
    assert show["splits"] == expected_splits and sum(show["splits"].values()) == 32

    raw = manifest_bytes(clients, "birds-cls")
    assert show["sha256"] == hashlib.sha256(gzip.decompress(raw)).hexdigest()
    recs = manifest_records(clients, "birds-cls")
    assert len(recs) == 32 and all(tuple(r) == mf.MANIFEST_FIELDS + mf.FACT_KEYS for r in recs)  # facts: issue 19
    # Sorted by container then blob (plain names, prefix-free sets: the documented order is plain order).
    assert [(r["container"], r["blob"]) for r in recs] == sorted((r["container"], r["blob"]) for r in recs)
    assert recs == sorted(recs, key=lambda r: mf.manifest_order_key(r["container"], r["blob"]))
    # The manifest's MD5s are the blobs' stored MD5s, as Azure reports them.
    birds = clients.container("birds")
    stored = {b.name: mf.hex_to_b64(bytes(b.content_settings.content_md5).hex()) for b in birds.list_blobs()}
    assert all(stored[r["blob"]] == r["md5"] for r in recs)
    # Every original and its transforms are in the same split; the source is the original.
    by_source: dict[str, set[str]] = {}
    for r in recs:
        assert r["source"]["md5"] == mf.hex_to_b64(originals[r["source"]["blob"]])
        by_source.setdefault(r["source"]["blob"], set()).add(r["split"])
        if r["transform"] is None:
            assert r["source"]["blob"] == r["blob"]
    assert len(by_source) == 20 and all(len(s) == 1 for s in by_source.values())

    # A model, and lineage both ways.
    reg = ok_json(env, tmp_path, "model", "register", "--name", "robin-net", "--version", "1", "--trainset", "birds-cls:1")
    assert reg["trainsets"] == [{"name": "birds-cls", "version": "1"}]
    lines = cli(env, tmp_path, "lineage", "--model", "robin-net:1", "--json").stdout.splitlines()
    assert [json.loads(line) for line in lines] == recs
    jay_original = f"birds/original/{JAY}/v3/j03.jpg"  # only its thumbnail is in the training set
    assert ok_json(env, tmp_path, "lineage", "--blob", jay_original) == {
        "trainsets": [{"name": "birds-cls", "version": "1"}],
        "models": [{"name": "robin-net", "version": "1"}],
    }
    assert ok_json(env, tmp_path, "lineage", "--blob", f"birds/original/{FINCH}/v3/f0.jpg") == {"trainsets": [], "models": []}
    assert ok_json(env, tmp_path, "lineage", "--blob", f"birds/original/{ROBIN}/v3/r01.jpg")["models"] == [
        {"name": "robin-net", "version": "1"}
    ]
    manifest_val = cli(env, tmp_path, "trainset", "manifest", "birds-cls:1", "--split", "val").stdout.splitlines()
    assert [json.loads(x) for x in manifest_val] == [r for r in recs if r["split"] == "val"]

    # Unready or missing training sets can't train a model; a model is immutable.
    bad = cli(env, tmp_path, "model", "register", "--name", "m", "--version", "1", "--trainset", "nope:1")
    assert bad.returncode == 1 and "does not exist" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    other = cli(
        env, tmp_path, "model", "register", "--name", "robin-net", "--version", "1", "--trainset", "birds-cls:1", "--uri", "x"
    )
    assert other.returncode == 1 and "immutable" in other.stderr

    # Images added to the source version later change nothing; the same request again is a no-op.
    ingest(env, clients, app_dir, {f"birds/v3/{ROBIN}/late{i}.jpg": jpeg(500 + i) for i in range(3)})
    assert cli(env, tmp_path, *create).returncode == 0
    clients.queue_client("trainset-requests").send_message(
        json.dumps(
            {
                "trainset": {"name": "birds-cls", "version": "1"},
                "sources": SOURCES,
                "labels": {"classes": ["robin", "jay"]},
                "split": {"train": 80, "val": 10, "test": 10},
            }
        )
    )
    run_host(env, app_dir)
    again = ok_json(env, tmp_path, "trainset", "show", "birds-cls:1")
    assert (again["images"], again["sha256"], again["status"]) == (32, show["sha256"], "ready")
    assert manifest_bytes(clients, "birds-cls") == raw

    # Another definition under the same name+version: refused by the CLI, and by the function.
    conflict = cli(
        env, tmp_path, "trainset", "create", "--name", "birds-cls", "--version", "1", "--domain", "birds", "--tag", "red"
    )
    assert conflict.returncode == 1 and "immutable" in conflict.stderr
    clients.queue_client("trainset-requests").send_message(
        json.dumps({"trainset": {"name": "birds-cls", "version": "1"}, "sources": SOURCES, "split": {"train": 50, "val": 50}})
    )
    run_host(env, app_dir)
    report = ok_json(env, tmp_path, "status")
    assert report["queues"]["trainset-requests-poison"] == 0  # taken by its recorder; the row below stays
    assert any("TrainsetConflictError" in f["Reason"] and "immutable" in f["Reason"] for f in report["failures"]["latest"])
    assert ok_json(env, tmp_path, "trainset", "show", "birds-cls:1")["sha256"] == show["sha256"]

    # verify: all there; then one blob changed behind the corpus's back is named.
    assert cli(env, tmp_path, "trainset", "verify", "birds-cls:1").returncode == 0
    victim = f"original/{ROBIN}/v3/r05.jpg"
    birds.get_blob_client(victim).upload_blob(jpeg(999), overwrite=True)
    gone = f"transform/thumbnail/1/{JAY}/v3/j02.jpg"
    birds.get_blob_client(gone).delete_blob()
    proc = cli(env, tmp_path, "trainset", "verify", "birds-cls:1")
    assert proc.returncode == 1
    assert f"changed: birds/{victim}" in proc.stdout and f"missing: birds/{gone}" in proc.stdout
    assert "2 of 32 images" in proc.stderr
    out = json.loads(cli(env, tmp_path, "trainset", "verify", "birds-cls:1", "--json").stdout)
    assert sorted(p["blob"] for p in out["problems"]) == sorted([f"birds/{victim}", f"birds/{gone}"])


def test_a_build_killed_mid_way_or_split_over_messages_gives_the_same_manifest(env, clients, app_dir, tmp_path):
    files = {f"birds/v3/{d}/{d[:1]}{i:02d}.jpg": jpeg(1000 * k + i) for k, d in enumerate(("jay", "robin")) for i in range(15)}
    ingest(env, clients, app_dir, files)

    def request(name: str) -> str:
        return json.dumps(
            {
                "trainset": {"name": name, "version": "1"},
                "sources": [{"domain": "birds", "path": p, "version": "v3"} for p in ("jay", "robin")],
                "labels": {"classes": ["jay", "robin"]},
                "split": {"train": 70, "val": 30},
            }
        )

    q = clients.queue_client("trainset-requests")
    q.send_message(request("whole"))
    run_host(env, app_dir)
    whole = ok_json(env, tmp_path, "trainset", "show", "whole:1")
    assert (whole["status"], whole["images"]) == ("ready", 30)

    # Two lines per block, a zero time budget: one message per block.
    tiny = {**env, "CORPUS_TRAINSET_BLOCK_IMAGES": "2", "CORPUS_TRAINSET_BUDGET_SECONDS": "0"}
    q.send_message(request("split"))
    summary = run_host(tiny, app_dir)
    assert summary["ok"]["build_trainset"] == 16  # 30 lines, 2 per block: 15 messages with a block each, 1 to finish
    split = ok_json(env, tmp_path, "trainset", "show", "split:1")
    assert (split["status"], split["sha256"], split["splits"], split["labels"]) == (
        "ready",
        whole["sha256"],
        whole["splits"],
        whole["labels"],
    )
    assert gzip.decompress(manifest_bytes(clients, "split")) == gzip.decompress(manifest_bytes(clients, "whole"))

    # The same, with the host SIGKILLed mid-build and restarted.
    app = app_dir
    q.send_message(request("killed"))
    table = clients.table_client("TrainingSets")
    proc = subprocess.Popen(host_command(app, "--lease", "2"), env=tiny, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _step(table, "killed") >= 3, 120, "three blocks of the build")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    mid = table.get_entity("killed", "1")
    assert mid["Status"] == "building", "the build finished before it could be killed; the test proves nothing"
    run_host(tiny, app, "--lease", "2")
    killed = ok_json(env, tmp_path, "trainset", "show", "killed:1")
    assert (killed["status"], killed["sha256"], killed["images"]) == ("ready", whole["sha256"], 30)
    assert manifest_bytes(clients, "killed") == manifest_bytes(clients, "split")  # same block size: byte-identical


def _step(table, name: str) -> int:
    try:
        return int(table.get_entity(name, "1")["Step"].value)
    except Exception:
        return 0


def test_create_wait_reports_ready_and_failed(env, clients, app_dir, tmp_path):
    def create(version: str, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
        args = ("trainset", "create", "--name", "w", "--version", version, "--domain", "birds", "--tag", tag)
        return cli(env, tmp_path, *args, *extra)

    wait = ("--wait", "--timeout", "60")
    ingest(env, clients, app_dir, {f"birds/v3/{ROBIN}/r{i}.jpg": jpeg(i) for i in range(3)})
    host = subprocess.Popen(host_command(app_dir), env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        ready = create("1", "robin", *wait, "--json")
        assert ready.returncode == 0, ready.stderr
        assert json.loads(ready.stdout)["images"] == 3 and json.loads(ready.stdout)["labels"] == {
            "angry": 3,
            "red": 3,
            "robin": 3,
        }
        failed = create("2", "robin", "--classes", "jay", *wait)
        assert failed.returncode == 1 and "selects no labelled images" in failed.stderr
        missing = create("3", "nosuch", *wait, "--force")  # past the CLI's own check: the function's verdict
        assert missing.returncode == 1 and "carries all of the tags" in missing.stderr
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
    bad = create("4", "x", "--split", "80/30")
    assert bad.returncode == 1 and "sum to 110" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert cli(env, tmp_path, "trainset", "show", "nope:1").returncode == 1
    unready = cli(env, tmp_path, "model", "register", "--name", "m", "--version", "1", "--trainset", "w:1", "--trainset", "w:2")
    assert unready.returncode == 1 and "w:2 is failed, not ready" in unready.stderr
    lines = cli(env, tmp_path, "lineage", "--trainset", "w:1", "--json").stdout.splitlines()
    assert sorted(json.loads(x)["blob"] for x in lines) == [f"original/{ROBIN}/v3/r{i}.jpg" for i in range(3)]
    listed = ok_json(env, tmp_path, "trainset", "list")
    assert [(t["name"], t["version"], t["status"]) for t in listed] == [
        ("w", "1", "ready"),
        ("w", "2", "failed"),
        ("w", "3", "failed"),
    ]


def test_python_api_registers_models(settings, rt, tmp_path):
    from corpus import lineage
    from corpus.app.trainsets import ModelError

    with pytest.raises(ModelError, match="does not exist"):
        lineage.register_model("m", "1", ["nope:1"], settings=settings)
    assert lineage.trainset("nope:1", settings=settings) is None


def test_manifest_order_is_the_documented_one_where_names_need_escaping_and_sets_nest(env, clients, app_dir, tmp_path):
    names = ["B b.jpg", "B-a.jpg", "a.jpg", "zz.jpg"]
    files = {f"birds/v2/{n}": jpeg(i) for i, n in enumerate(names)} | {"birds/v1/v2/x.jpg": jpeg(9)}
    ingest(env, clients, app_dir, files)
    sources = [{"domain": "birds", "path": "<root>", "version": "v2"}, {"domain": "birds", "path": "v2", "version": "v1"}]
    clients.queue_client("trainset-requests").send_message(
        json.dumps({"trainset": {"name": "order", "version": "1"}, "sources": sources})
    )
    run_host(env, app_dir)
    blobs = [r["blob"] for r in manifest_records(clients, "order")]
    assert blobs == [
        "original/v2/B-a.jpg",
        "original/v2/B b.jpg",
        "original/v2/a.jpg",
        "original/v2/zz.jpg",
        "original/v2/v1/x.jpg",
    ]
    assert blobs == sorted(blobs, key=lambda b: mf.manifest_order_key("birds", b))
    labels = {r["blob"]: r["labels"] for r in manifest_records(clients, "order")}
    assert labels["original/v2/a.jpg"] == [] and labels["original/v2/v1/x.jpg"] == ["v2"]  # the root set has no tags
