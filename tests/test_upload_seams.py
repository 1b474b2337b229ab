"""The uploader's planning, decisions and failure paths, through its seams: a fake lister and
sender and the null MD5 cache. No storage, no SDK: each test runs in milliseconds."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

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
    assert sorted(lister.calls) == sorted(
        [
            ("staging", "birds/v1/red/robin/"),
            ("birds", "original/red/robin/v1/"),
            ("staging", "birds/v1/blue/"),
            ("birds", "original/blue/v1/"),
        ]
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
