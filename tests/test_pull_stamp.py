"""A re-run of a completed pull by its stamp (corpus/pull/stamp.py), on Azurite: nothing to do is
a stat per file; a deleted or changed file, another split or manifest, a failed or half-written
record: the pull runs in full and repairs the folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from azure.storage.blob import ContentSettings

from corpus.domain.manifest import ManifestEntry, hex_to_b64
from corpus.pull.runner import Puller, PullOptions, PullSummary, stamp_dir
from corpus.pull.sources import TrainsetSource
from tests.trainset_support import publish_ready

pytestmark = pytest.mark.e2e


def make_set(clients, name: str, n: int = 12) -> dict[str, bytes]:
    """``n`` blobs in container ``birds``, labels a/b/c, splits train/val, and a ready training set of them."""
    clients.ensure(containers=("birds",))
    entries, blobs = [], {}
    for i in range(n):
        data = f"image {i} of {name}".encode() * 20
        md5 = hashlib.md5(data).digest()
        blob = f"original/{'abc'[i % 3]}/v1/{i:03d}.jpg"
        clients.container("birds").upload_blob(
            blob, data, overwrite=True, content_settings=ContentSettings(content_md5=bytearray(md5))
        )
        b64 = hex_to_b64(md5.hex())
        label = "abc"[i % 3]
        split = "val" if i % 4 == 0 else "train"
        entries.append(ManifestEntry("birds", blob, b64, len(data), 8, 8, "birds", label, "v1", None, blob, b64, (label,), split))
        blobs[blob] = data
    publish_ready(clients, "trainsets", name, "1", sorted(entries, key=lambda e: e.sort_key))
    return blobs


def pull(settings, dest: Path, name: str = "set", **opts: object) -> PullSummary:
    return Puller(settings, PullOptions(TrainsetSource(name, "1"), dest, concurrency=4, **opts)).run()  # type: ignore[arg-type]


def files(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*.jpg")}


def test_a_rerun_with_nothing_to_do_is_settled_by_the_stamp_and_a_damaged_folder_is_repaired(settings, clients, tmp_path):
    make_set(clients, "set")
    dest = tmp_path / "dest"
    first = pull(settings, dest)
    assert (first.files, first.downloaded, first.stamped, first.failures) == (12, 12, False, [])
    want = files(dest)
    assert len(want) == 12

    again = pull(settings, dest)
    assert (again.files, again.present, again.downloaded, again.stamped) == (12, 12, 0, True)
    assert again.bytes == first.bytes and again.renamed == first.renamed

    # A deleted file: the stamp no longer holds; the pull runs in full and fetches exactly that file.
    victim = sorted(want)[3]
    (dest / victim).unlink()
    repaired = pull(settings, dest)
    assert (repaired.stamped, repaired.downloaded, repaired.present) == (False, 1, 11)
    assert files(dest) == want
    assert pull(settings, dest).stamped  # and the new stamp holds

    # A changed file, same size, new content (its mtime moves): fetched again, verified.
    other = sorted(want)[5]
    (dest / other).write_bytes(b"x" * len(want[other]))
    fixed = pull(settings, dest)
    assert (fixed.stamped, fixed.downloaded) == (False, 1)
    assert files(dest) == want

    # Same size and content but another mtime: not a stamp hit; nothing downloaded (hashed, equal).
    st = os.stat(dest / other)
    os.utime(dest / other, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = pull(settings, dest)
    assert (touched.stamped, touched.downloaded, touched.present) == (False, 0, 12)


def test_the_stamp_is_of_one_manifest_split_and_complete_pull(settings, clients, tmp_path):
    make_set(clients, "set")
    dest = tmp_path / "dest"
    assert not pull(settings, dest, split="train").stamped
    assert pull(settings, dest, split="train").stamped
    whole = pull(settings, dest)  # another selection: its own stamp, the train files already there
    assert (whole.stamped, whole.present, whole.downloaded) == (False, 9, 3)
    assert pull(settings, dest).stamped and pull(settings, dest, split="train").stamped

    # --no-cache and --dry-run never use it (nor write one).
    assert not pull(settings, dest, use_cache=False).stamped
    assert not pull(settings, dest, dry_run=True).stamped

    # A stamp cut short (no trailer, as a pull killed while writing it would leave it) is ignored.
    (stamp,) = [p for p in stamp_dir().iterdir() if p.read_text().count("\n") == 14]  # header, 12 files, trailer
    stamp.write_text("".join(stamp.read_text().splitlines(keepends=True)[:-1]))
    assert not pull(settings, dest).stamped
    assert pull(settings, dest).stamped

    # A new manifest under another name into the same folder: not this stamp.
    make_set(clients, "set2")
    second = pull(settings, dest, name="set2")
    assert not second.stamped and second.downloaded == 12


def test_a_failed_pull_writes_no_stamp(settings, clients, tmp_path):
    blobs = make_set(clients, "set")
    broken = sorted(blobs)[0]
    clients.container("birds").upload_blob(broken, b"changed behind the corpus's back", overwrite=True)
    dest = tmp_path / "dest"
    first = pull(settings, dest)
    assert len(first.failures) == 1 and first.downloaded == 11
    again = pull(settings, dest)
    assert not again.stamped and len(again.failures) == 1 and again.present == 11
    assert not list(stamp_dir().glob("*.jsonl"))
