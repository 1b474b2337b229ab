"""End to end on Azurite: ``corpus pull`` of a training set, both layouts, re-run, SIGKILL, changed blob;
readable names (issue 22), B2/B3/B4/B6 of issue 25."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from corpus.domain.layouts import PART_SUFFIX, local_paths
from corpus.domain.paths import SetRef
from tests.support import ingest, jpeg, run_cli, wait_for
from tests.trainset_support import manifest_entries, write_trainset

pytestmark = pytest.mark.e2e


def tree(root: Path) -> dict[str, str]:
    """Every regular file under root (relative path → MD5 hex), the name map excluded."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            rel = p.relative_to(root).as_posix()
            if rel != ".corpus-names.jsonl":
                out[rel] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def pull(env, cwd, *args):
    return run_cli(env, cwd, "pull", *args)


ROBINS = {f"birds/v1/red/robin/{i}.jpg": jpeg(i, (48, 40)) for i in range(6)}
JAYS = {f"birds/v1/blue/jay/{i}.jpg": jpeg(100 + i, (48, 40)) for i in range(4)}
# The same camera file names in another set: the normal case, renamed never (issue 22).
LOUD = {f"birds/v1/blue/loud/jay/{i}.jpg": jpeg(150 + i, (48, 40)) for i in range(4)}
# Names a local file system can't hold as they are: a colon (Windows), a reserved device name,
# and two names that differ only in case (macOS and Windows fold case).
ODD = {
    "birds/v1/blue/jay/a:b.jpg": jpeg(200),
    "birds/v1/blue/jay/CON.jpg": jpeg(201),
    "birds/v1/blue/jay/Case.jpg": jpeg(202),
    "birds/v1/blue/jay/case.jpg": jpeg(203),
}


def make_trainset(env, clients, app_dir, rt):
    ingest(env, clients, app_dir, ROBINS | JAYS | LOUD | ODD)
    entries = manifest_entries(
        rt,
        [
            (SetRef("birds", ("red", "robin"), "v1"), ["robin"]),
            (SetRef("birds", ("blue", "jay"), "v1"), ["jay"]),
            (SetRef("birds", ("blue", "loud", "jay"), "v1"), ["jay"]),
        ],
    )
    assert len(entries) == 18
    write_trainset(rt, "birds-cls", "1", entries)
    return entries


def test_pull_both_layouts_rerun_and_a_changed_blob(env, clients, app_dir, rt, tmp_path):
    entries = make_trainset(env, clients, app_dir, rt)
    want_md5s = sorted(e.md5_hex for e in entries)

    # imagefolder: <split>/<label>/<file>, every file with its manifest MD5.
    dest = tmp_path / "if"
    first = pull(env, tmp_path, "birds-cls:1", str(dest), "--json")
    assert first.returncode == 0, first.stderr
    s1 = json.loads(first.stdout)
    assert (s1["files"], s1["downloaded"], s1["present"], s1["failed"]) == (18, 18, 0, 0)
    got = tree(dest)
    assert sorted(got.values()) == want_md5s
    assert {p.split("/")[0] for p in got} <= {"train", "val", "test"}
    for e in entries:
        label_dir = f"{e.split}/{e.labels[0]}/"
        assert any(p.startswith(label_dir) and got[p] == e.md5_hex for p in got), (e.blob, label_dir)
    # Readable names: <split>/<class>/<set path>__<file>; shared camera names are not renamed.
    for e in entries:
        if e.blob.rpartition("/")[2] in ("0.jpg", "1.jpg", "2.jpg", "3.jpg"):
            want = f"{e.split}/{e.labels[0]}/{e.path.replace('/', '_')}__{e.blob.rpartition('/')[2]}"
            assert got.get(want) == e.md5_hex, want
    assert len({p.casefold() for p in got}) == len(got), "two files differ only in case"
    assert not any(":" in p or p.split("/")[-1].split(".")[0].upper() == "CON" for p in got)
    assert not any(p.endswith(PART_SUFFIX) for p in got)
    mapped = [json.loads(line) for line in (dest / ".corpus-names.jsonl").read_text().splitlines()]
    renamed = {
        f"{e.container}/{e.blob}" for e, lp in zip(entries, local_paths(entries, "imagefolder"), strict=True) if lp.changed
    }
    assert {f"{m['container']}/{m['blob']}" for m in mapped} == renamed
    assert "birds/original/blue/jay/v1/a:b.jpg" in renamed and not any("/CON" in r or "/jay/v1/0" in r for r in renamed)
    assert s1["renamed"] == len(mapped)

    # A second pull transfers nothing.
    second = json.loads(pull(env, tmp_path, "birds-cls:1", str(dest), "--json").stdout)
    assert (second["downloaded"], second["bytes_downloaded"], second["present"]) == (0, 0, 18)
    assert tree(dest) == got

    # corpus layout: <container>/<blob>, names mapped reversibly; --split selects one split.
    dest2 = tmp_path / "mirror"
    third = pull(env, tmp_path, "birds-cls:1", str(dest2), "--layout", "corpus", "--json")
    assert third.returncode == 0, third.stderr
    mirror = tree(dest2)
    mirror_map = (dest2 / ".corpus-names.jsonl").read_text()
    assert sorted(mirror.values()) == want_md5s
    from urllib.parse import unquote

    names = {unquote(p) for p in mirror if "~" not in p}
    plain = {f"{e.container}/{e.blob}" for e in entries if e.blob.rpartition("/")[2] not in ("Case.jpg", "case.jpg")}
    assert names == plain
    # B6: --split train then --split test into one folder: the name map keeps both; the tree is a
    # full pull's tree restricted to those splits, file for file (names decided over every split).
    by_split = tmp_path / "by-split"
    for split in ("train", "test"):
        one = json.loads(
            pull(env, tmp_path, "birds-cls:1", str(by_split), "--layout", "corpus", "--split", split, "--json").stdout
        )
        assert one["files"] == sum(1 for e in entries if e.split == split)
    split_of_blob = {f"{e.container}/{e.blob}": e.split for e in entries}
    full_map = [json.loads(x) for x in (dest2 / ".corpus-names.jsonl").read_text().splitlines()]
    two_map = [json.loads(x) for x in (by_split / ".corpus-names.jsonl").read_text().splitlines()]
    assert two_map == [m for m in full_map if split_of_blob[f"{m['container']}/{m['blob']}"] in ("train", "test")]
    assert tree(by_split) == {p: md5 for p, md5 in mirror.items() if any(
        e.md5_hex == md5 and e.split in ("train", "test") for e in entries)}  # fmt: skip

    # Ad hoc: the sets carrying a tag, straight from the catalog (no manifest, no splits).
    adhoc = pull(env, tmp_path, "--domain", "birds", "--tag", "robin", "--set-version", "v1", str(tmp_path / "adhoc"), "--json")
    assert adhoc.returncode == 0, adhoc.stderr
    robins = tree(tmp_path / "adhoc")
    assert sorted(robins) == [f"red+robin/red_robin__{i}.jpg" for i in range(6)]  # the set's tags are its labels
    assert sorted(robins.values()) == sorted(e.md5_hex for e in entries if "/robin/" in e.blob)

    # A blob changed behind the corpus's back fails with its name; the others are fine.
    victim = next(e for e in entries if e.blob.endswith("robin/v1/3.jpg"))
    clients.container("birds").upload_blob(victim.blob, jpeg(999), overwrite=True)
    (victim_path,) = [p for p, md5 in got.items() if md5 == victim.md5_hex]
    (dest / victim_path).unlink()
    failures = tmp_path / "failures.json"
    bad = pull(env, tmp_path, "birds-cls:1", str(dest), "--json", "--failures", str(failures))
    assert bad.returncode == 1
    s4 = json.loads(bad.stdout)
    (failure,) = s4["failures"]
    assert failure["blob"] == victim.blob and "changed" in failure["reason"]
    assert s4["present"] == 17
    assert not (dest / victim_path).exists() and not list(dest.rglob("*" + PART_SUFFIX))
    # --retry-from retries exactly that file (still changed: still failing, by name).
    retry = pull(env, tmp_path, "--retry-from", str(failures), "--json")
    assert retry.returncode == 1 and json.loads(retry.stdout)["files"] == 1
    assert victim.blob in retry.stdout

    # B4: --retry-from names a retried file as a full pull does (one of a case pair, renamed).
    pair = next(e for e in entries if e.blob.endswith("/Case.jpg"))
    (case_path,) = [p for p, md5 in mirror.items() if md5 == pair.md5_hex]
    assert "~" in case_path
    (dest2 / case_path).unlink()
    summary3 = json.loads(third.stdout)
    failed = [{"container": pair.container, "blob": pair.blob, "path": "", "reason": "x"}]
    retry_file = tmp_path / "retry.json"
    retry_file.write_text(json.dumps({**summary3, "failures": failed}))
    again = pull(env, tmp_path, "--retry-from", str(retry_file), "--json")
    assert again.returncode == 0, again.stderr
    assert tree(dest2) == mirror  # the same name as the full pull: no third file
    assert (dest2 / ".corpus-names.jsonl").read_text() == mirror_map


def test_class_indices_agree_with_imagefolder_over_a_pulled_copy(env, clients, app_dir, rt, settings, tmp_path):
    """Issue 25, B3: names a file system can't hold are encoded in folder names; ImageFolder's
    indices (sorted folder names, via os.scandir) must still be TrainsetDataset's."""
    from corpus.dataset import TrainsetDataset

    ingest(env, clients, app_dir, ROBINS | JAYS)
    entries = manifest_entries(
        rt, [(SetRef("birds", ("red", "robin"), "v1"), ["robin"]), (SetRef("birds", ("blue", "jay"), "v1"), ["jay"])]
    )
    classes = ["con", "100%", "a:b", "a+b", "COM¹", "Zeta"]
    import dataclasses

    odd = [dataclasses.replace(e, labels=(classes[i % len(classes)],), split="train") for i, e in enumerate(entries)]
    write_trainset(rt, "odd-classes", "1", odd)
    dest = tmp_path / "odd"
    out = pull(env, tmp_path, "odd-classes:1", str(dest), "--json")
    assert out.returncode == 0, out.stderr
    # torchvision.datasets.ImageFolder's documented rule (find_classes): sorted folder names.
    folders = sorted(entry.name for entry in os.scandir(dest / "train") if entry.is_dir())
    imagefolder = {name: i for i, name in enumerate(folders)}
    ds = TrainsetDataset("odd-classes", "1", split="train", decode=False, settings=settings)
    assert len(folders) == len(classes) == len(ds.classes)
    from corpus.domain.layouts import class_folder

    assert {class_folder(c): i for c, i in ds.class_to_idx.items()} == imagefolder
    # R7: the dataset holds offsets into a spill file, not the entries (8 bytes a sample, pickled too).
    import pickle

    assert len(pickle.dumps(ds.entries)) < 512 + 16 * len(ds)
    # And each pulled file's folder index is the dataset's label for that blob.
    for i in range(len(ds)):
        e = ds.entries[i]
        assert imagefolder[class_folder(e.labels[0])] == ds[i][1]


def test_sigkill_mid_pull_then_rerun_gives_a_complete_verified_tree(env, clients, app_dir, rt, tmp_path):
    files = {f"birds/v1/red/robin/{i}.jpg": jpeg(i, (400, 300), quality=95) for i in range(30)}
    ingest(env, clients, app_dir, files)
    entries = manifest_entries(rt, [(SetRef("birds", ("red", "robin"), "v1"), ["robin"])])
    write_trainset(rt, "slow", "1", entries)
    total = sum(e.size for e in entries)
    dest = tmp_path / "dest"
    # Throttled so that the pull is still running when killed: about 4 s for the whole set.
    mbps = total * 8 / 1e6 / 4
    cmd = [sys.executable, "-m", "corpus", "pull", "slow:1", str(dest), "--concurrency", "4", "--cap-mbps", f"{mbps:.3f}"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len([p for p in dest.rglob("*.jpg")]) >= 5, 60, "a few files pulled")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    by_md5 = {e.md5_hex for e in entries}
    partial = tree(dest)
    assert 5 <= sum(1 for p in partial if p.endswith(".jpg")) < 30, "the kill came too late to test anything"
    # Whatever carries a final name is complete and verified.
    assert all(md5 in by_md5 for p, md5 in partial.items() if not p.endswith(PART_SUFFIX))

    again = pull(env, tmp_path, "slow:1", str(dest), "--json")
    assert again.returncode == 0, again.stderr
    s = json.loads(again.stdout)
    assert s["downloaded"] + s["present"] == 30 and s["present"] >= 5
    final = tree(dest)
    assert sorted(final.values()) == sorted(by_md5) and len(final) == 30
    assert not any(p.endswith(PART_SUFFIX) for p in final)
