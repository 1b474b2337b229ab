"""The uploader's planning, decisions and failure paths, through its seams: a fake lister and
sender and the null MD5 cache. No storage, no SDK: each test runs in milliseconds."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from corpus.domain.errors import StorageError
from corpus.store.settings import Settings
from corpus.transfer.hashcache import NullHashCache
from corpus.upload.runner import Uploader, UploadOptions

SETTINGS = Settings.from_env({})


class FakeLister:
    def __init__(self, remote: dict[tuple[str, str], dict[str, str]]) -> None:
        self.remote = remote
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def list_md5s(self, container: str, prefix: str) -> dict[str, str]:
        with self.lock:
            self.calls.append((container, prefix))
        return dict(self.remote.get((container, prefix), {}))

    def list_page(self, container: str, prefix: str, limit: int) -> tuple[dict[str, str], bool]:
        """The folders' blobs under ``prefix`` as one flat listing, in name order, ``limit`` at most."""
        with self.lock:
            self.calls.append((container, prefix))
        flat = sorted(
            (folder[len(prefix) :] + name, md5)
            for (c, folder), blobs in self.remote.items()
            if c == container and folder.startswith(prefix)
            for name, md5 in blobs.items()
        )
        return dict(flat[:limit]), len(flat) <= limit


class FakeSender:
    def __init__(self, exists: dict[str, str] | None = None, broken: set[str] | None = None) -> None:
        self.puts: dict[str, bytes] = {}
        self.exists = exists or {}
        self.broken = broken or set()
        self.lock = threading.Lock()

    def put(self, name: str, data: bytes, md5: bytes, content_type: str) -> bool:
        assert hashlib.md5(data).digest() == md5
        if name in self.broken:
            raise StorageError("storage error 500 InternalError: try later")
        if name in self.exists:
            return False
        with self.lock:
            self.puts[name] = data
        return True

    def remote_md5(self, name: str) -> str:
        return self.exists[name]


def drop(tmp_path: Path) -> Path:
    src = tmp_path / "drop"
    (src / "red" / "robin").mkdir(parents=True)
    (src / "blue").mkdir()
    (src / "red" / "robin" / "a.jpg").write_bytes(b"a" * 10)
    (src / "red" / "robin" / "b.jpg").write_bytes(b"b" * 10)
    (src / "blue" / "c.png").write_bytes(b"c" * 10)
    (src / "blue" / "notes.txt").write_bytes(b"not an image")
    (src / ".DS_Store").write_bytes(b"junk")
    return src


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def run(src: Path, lister: FakeLister, sender: FakeSender, **opts: object) -> Uploader:
    uploader = Uploader(
        SETTINGS, UploadOptions(src, "birds", "v1", concurrency=4, **opts), lister=lister, sender=sender, cache=NullHashCache()
    )  # type: ignore[arg-type]
    uploader.run()
    return uploader


def test_plans_names_lists_each_folder_once_and_sends_only_images(tmp_path: Path) -> None:
    src = drop(tmp_path)
    lister, sender = FakeLister({}), FakeSender()
    s = run(src, lister, sender).summary
    assert set(sender.puts) == {"birds/v1/red/robin/a.jpg", "birds/v1/red/robin/b.jpg", "birds/v1/blue/c.png"}
    assert s.uploaded == 3 and s.failures == [] and s.skipped["junk"] == 1 and s.skipped["not an image extension"] == 1
    # Staging: one flat page of the version (it was all of it); original/: the folders with files to send.
    assert sorted(lister.calls) == sorted(
        [("staging", "birds/v1/"), ("birds", "original/red/robin/v1/"), ("birds", "original/blue/v1/")]
    )


def test_already_remote_is_skipped_and_different_content_is_a_conflict(tmp_path: Path) -> None:
    src = drop(tmp_path)
    lister = FakeLister(
        {
            ("staging", "birds/v1/red/robin/"): {"a.jpg": md5(b"a" * 10)},
            ("birds", "original/red/robin/v1/"): {"b.jpg": md5(b"other")},
            ("birds", "original/blue/v1/"): {"c.png": md5(b"c" * 10)},
        }
    )
    sender = FakeSender()
    s = run(src, lister, sender).summary
    assert sender.puts == {}
    assert (s.already_staged, s.already_ingested, s.conflicts, s.failed) == (1, 1, 1, 0)
    (conflict,) = s.failures
    assert conflict.kind == "conflict" and conflict.staged == "birds/v1/red/robin/b.jpg"


def test_a_failing_put_fails_its_file_only_and_a_race_with_the_same_content_is_fine(tmp_path: Path) -> None:
    src = drop(tmp_path)
    sender = FakeSender(exists={"birds/v1/blue/c.png": md5(b"c" * 10)}, broken={"birds/v1/red/robin/a.jpg"})
    s = run(src, FakeLister({}), sender).summary
    assert set(sender.puts) == {"birds/v1/red/robin/b.jpg"}
    assert s.already_staged == 1 and s.uploaded == 1
    (failure,) = s.failures
    assert failure.kind == "failed" and failure.staged == "birds/v1/red/robin/a.jpg" and "500" in failure.reason


def test_dry_run_sends_nothing(tmp_path: Path) -> None:
    src = drop(tmp_path)
    sender = FakeSender()
    s = run(src, FakeLister({}), sender, dry_run=True).summary
    assert sender.puts == {} and s.would_upload == 3 and s.uploaded == 0


def test_a_file_that_vanishes_after_the_walk_is_reported_not_lost(tmp_path: Path) -> None:
    src = drop(tmp_path)

    class VanishingLister(FakeLister):
        def list_md5s(self, container: str, prefix: str) -> dict[str, str]:
            (src / "blue" / "c.png").unlink(missing_ok=True)
            return super().list_md5s(container, prefix)

    s = run(src, VanishingLister({}), FakeSender()).summary
    assert s.uploaded == 2
    (failure,) = s.failures
    assert failure.path.endswith("c.png") and "cannot read" in failure.reason


def many(tmp_path: Path) -> tuple[Path, dict[tuple[str, str], dict[str, str]]]:
    """12 files in 3 folders; 10 already staged (all of ``a`` and ``b``, half of ``c``): the remote."""
    src = tmp_path / "many"
    remote: dict[tuple[str, str], dict[str, str]] = {}
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        for i in range(4):
            data = f"{d}{i}".encode() * 5
            (src / d / f"{i}.jpg").write_bytes(data)
            if d != "c" or i < 2:
                remote.setdefault(("staging", f"birds/v1/{d}/"), {})[f"{i}.jpg"] = md5(data)
    return src, remote


@pytest.mark.parametrize("limit", [10, 9, 5, 1])
def test_the_flat_page_settles_what_is_staged_whether_or_not_it_holds_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    # FLAT_LISTING_LIMIT just at the 10 staged blobs (one page holds them all) and just under it (the
    # page stops inside folder c, or earlier): the same outcome, only the requests differ.
    from corpus.upload import runner

    monkeypatch.setattr(runner, "FLAT_LISTING_LIMIT", limit)
    src, remote = many(tmp_path)
    lister, sender = FakeLister(remote), FakeSender()
    s = run(src, lister, sender).summary
    assert set(sender.puts) == {"birds/v1/c/2.jpg", "birds/v1/c/3.jpg"}
    assert (s.uploaded, s.already_staged, s.failures) == (2, 10, [])
    per_folder = sorted(c for c in lister.calls if c != ("staging", "birds/v1/"))
    covered = {10: {"a", "b", "c"}, 9: {"a", "b"}, 5: {"a"}, 1: set()}[limit]  # the page ends in c, in b, in a
    assert per_folder == sorted(
        [("birds", "original/c/v1/")] + [("staging", f"birds/v1/{d}/") for d in ("a", "b", "c") if d not in covered]
    )  # original/ only where something is missing: a and b, all staged, are never listed there


def test_a_name_outside_the_staging_contract_fails_when_it_would_be_sent_and_only_then(tmp_path: Path) -> None:
    # "x." as a folder: Azure may trim a segment's trailing dot, so the name is refused before any
    # write. A re-run checks names only of what it would send: one already staged (by another tool,
    # same bytes) is skipped like any other, and ingest, which checks every staged name, reports it.
    src = drop(tmp_path)
    (src / "x.").mkdir()
    (src / "x." / "p.jpg").write_bytes(b"p" * 10)
    sender = FakeSender()
    s = run(src, FakeLister({}), sender).summary
    assert "birds/v1/x./p.jpg" not in sender.puts and s.uploaded == 3
    (failure,) = s.failures
    assert failure.staged == "x./p.jpg" and "does not fit the staging contract" in failure.reason and "'.'" in failure.reason
    dry = run(src, FakeLister({}), FakeSender(), dry_run=True).summary
    assert dry.would_upload == 3 and len(dry.failures) == 1
    staged = FakeLister({("staging", "birds/v1/x./"): {"p.jpg": md5(b"p" * 10)}})
    again = run(src, staged, FakeSender()).summary
    assert again.failures == [] and again.already_staged == 1


def test_a_version_that_cannot_be_listed_stops_the_run_before_any_file(tmp_path: Path) -> None:
    # The flat listing is the run's first request and its reachability check (there is no probe
    # before it): when it fails, run() raises that failure having decided and sent nothing, and
    # lists no folder either (each would fail the same way, one line per file).
    from corpus.transfer.bloblist import ListingError

    class DownLister(FakeLister):
        def list_page(self, container: str, prefix: str, limit: int) -> tuple[dict[str, str], bool]:
            super().list_page(container, prefix, limit)
            raise ListingError("cannot reach http://127.0.0.1:9/x: ConnectionRefusedError: refused")

    src = drop(tmp_path)
    for i in range(40):  # still planning when the listing fails: stopping it is no failure of the run
        (src / "many" / str(i)).mkdir(parents=True)
        (src / "many" / str(i) / "x.jpg").write_bytes(b"x")
    for dry_run in (False, True):
        lister, sender = DownLister({}), FakeSender()
        uploader = Uploader(
            SETTINGS,
            UploadOptions(src, "birds", "v1", concurrency=4, dry_run=dry_run),
            lister=lister,
            sender=sender,
            cache=NullHashCache(),
        )
        with pytest.raises(ListingError, match="cannot reach"):
            uploader.run()
        assert sender.puts == {} and lister.calls == [("staging", "birds/v1/")]
        s = uploader.summary
        assert (s.uploaded, s.would_upload, s.failures) == (0, 0, [])
