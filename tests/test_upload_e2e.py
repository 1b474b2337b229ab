"""``corpus upload`` against a real Azurite: paths, MD5s, resume, failures, conflicts, throttles."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest

from corpus.upload.runner import Uploader, UploadOptions
from tests.support import ACCOUNT, jpeg, run_cli, run_host, wait_for

pytestmark = pytest.mark.e2e


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_drop(root: Path, n_per_dir: int = 3) -> dict[str, bytes]:
    """Nested tag directories, junk, odd names. Returns the expected staged relative names → bytes."""
    expected: dict[str, bytes] = {}
    files = {
        "red/angry/robin": [f"img{i}.jpg" for i in range(n_per_dir)],
        "blue/calm": [f"b{i}.JPG" for i in range(n_per_dir)],
        "ünïcode dir/with space": ["#hash?.png", "100% real.jpeg"],
        "": ["root.webp"],
    }
    seed = 0
    for d, names in files.items():
        (root / d).mkdir(parents=True, exist_ok=True)
        for name in names:
            seed += 1
            data = jpeg(seed)
            (root / d / name).write_bytes(data)
            expected[f"{d}/{name}" if d else name] = data
    nfd = unicodedata.normalize("NFD", "café")  # as macOS writes names
    (root / nfd).mkdir()
    (root / nfd / "x.jpg").write_bytes(data := jpeg(99))
    expected["café/x.jpg"] = data
    (root / "win\\style.jpg").write_bytes(data := jpeg(98))  # a Windows path, unpacked on Linux
    expected["win/style.jpg"] = data
    for junk in (".DS_Store", "red/Thumbs.db", "red/desktop.ini", "red/._img0.jpg", "notes.txt", ".hidden/x.jpg"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(b"junk")
    outside = root.parent / "outside.jpg"
    outside.write_bytes(jpeg(97))
    (root / "red" / "link-out.jpg").symlink_to(outside)
    return expected


def upload(env, cwd, *args) -> tuple[int, dict]:
    proc = run_cli(env, cwd, "upload", *args, "--json")
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {"stderr": proc.stderr}


def staged(clients, prefix: str) -> dict[str, str]:
    return {b.name[len(prefix):]: bytes(b.content_settings.content_md5 or b"").hex()
            for b in clients.container("staging").list_blobs(name_starts_with=prefix)}  # fmt: skip


def test_drop_lands_at_contract_paths_with_md5s_then_rerun_sends_nothing(env, clients, app_dir, tmp_path):
    src = tmp_path / "drop"
    src.mkdir()
    expected = make_drop(src)
    rc, first = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1")
    assert rc == 0, first
    assert staged(clients, "birds/v1/") == {k: md5(v) for k, v in expected.items()}
    assert first["uploaded"] == len(expected)
    assert first["skipped"] == {"junk": 4, "hidden": 1, "not an image extension": 1, "symlink leaving the source folder": 1}
    ctype = clients.container("staging").get_blob_client("birds/v1/blue/calm/b0.JPG").get_blob_properties().content_settings
    assert ctype.content_type == "image/jpeg"

    rc, second = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1")
    assert rc == 0 and second["uploaded"] == 0 and second["already_staged"] == len(expected)

    run_host(env, app_dir)  # ingest: staging empties, originals appear
    assert staged(clients, "birds/v1/") == {}
    rc, third = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1")
    assert rc == 0 and third["uploaded"] == 0 and third["already_ingested"] == len(expected)


def test_dry_run_sends_nothing(env, clients, tmp_path):
    src = tmp_path / "drop"
    src.mkdir()
    expected = make_drop(src)
    proc = run_cli(env, tmp_path, "upload", str(src), "--domain", "birds", "--version", "v1", "--dry-run")
    assert proc.returncode == 0
    assert proc.stderr.count("would upload birds/v1/") == len(expected)
    assert staged(clients, "birds/v1/") == {}


def test_unreadable_file_is_reported_everything_else_uploaded_and_retry_from_retries_it(env, clients, tmp_path):
    src = tmp_path / "drop"
    (src / "a").mkdir(parents=True)
    for i in range(5):
        (src / "a" / f"{i}.jpg").write_bytes(jpeg(i))
    (src / "a" / "bad.jpg").symlink_to(src / "a" / "missing.jpg")  # inside SRC, but cannot be read
    failures = tmp_path / "failures.json"
    rc, out = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1", "--failures", str(failures))
    assert rc == 1
    assert out["uploaded"] == 5 and out["failed"] == 1
    report = json.loads(failures.read_text())
    (failure,) = report["failures"]
    assert failure["path"].endswith("a/bad.jpg") and "cannot read" in failure["reason"]
    assert set(staged(clients, "birds/v1/")) == {f"a/{i}.jpg" for i in range(5)}

    (src / "a" / "missing.jpg").write_bytes(jpeg(50))
    (src / "a" / "new-but-not-listed.jpg").write_bytes(jpeg(51))
    rc, retry = upload(env, tmp_path, "--retry-from", str(failures))
    assert rc == 0 and retry["uploaded"] == 1  # exactly the failed file, nothing else
    assert staged(clients, "birds/v1/")["a/bad.jpg"] == md5(jpeg(50))
    assert "a/new-but-not-listed.jpg" not in staged(clients, "birds/v1/")


def test_retry_from_walks_again_a_directory_that_could_not_be_listed(env, clients, tmp_path):
    # As root (CI) no directory is unreadable, so the failures file is the one the walk would
    # write when os.scandir fails on "b" (e.g. permission denied); its format is documented.
    src = tmp_path / "drop"
    for d in ("a", "b", "b/deeper"):
        (src / d).mkdir(parents=True)
        (src / d / "x.jpg").write_bytes(jpeg(len(d)))
    failures = tmp_path / "failures.json"
    failures.write_text(json.dumps({
        "source": str(src), "domain": "birds", "version": "v1",
        "failures": [{"path": str(src / "b"), "staged": "", "reason": "cannot list directory: denied", "kind": "failed"}],
    }))  # fmt: skip
    rc, retry = upload(env, tmp_path, "--retry-from", str(failures))
    assert rc == 0 and retry["uploaded"] == 2, retry
    assert set(staged(clients, "birds/v1/")) == {"b/x.jpg", "b/deeper/x.jpg"}


def test_storage_that_refuses_the_credentials_is_one_line_and_nothing_uploaded(env, clients, tmp_path):
    # The first listing is the reachability check (tests/test_newcomer_e2e.py: storage down). A
    # wrong key is answered (403): one line naming the refusal, no file tried, no retries.
    src = tmp_path / "drop"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.jpg").write_bytes(jpeg(1))
    wrong = env["CorpusStorage"].replace(env["CorpusStorage"].split("AccountKey=")[1].split(";")[0], "d3Jvbmc=")
    for extra in ((), ("--dry-run",)):
        proc = run_cli(
            {**env, "CorpusStorage": wrong}, tmp_path, "upload", str(src), "--domain", "birds", "--version", "v1", *extra
        )
        assert proc.returncode == 1, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("corpus: error: storage refused to list staging, nothing uploaded: storage error 403"), line
    assert staged(clients, "birds/v1/") == {}


def test_conflicting_file_is_reported_not_overwritten(env, clients, app_dir, tmp_path):
    src = tmp_path / "drop"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.jpg").write_bytes(jpeg(1))
    (src / "d" / "y.jpg").write_bytes(jpeg(2))
    st = clients.container("staging")
    st.upload_blob("birds/v1/d/x.jpg", jpeg(3))  # someone else's different file, same name
    rc, out = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1")
    assert rc == 1 and out["conflicts"] == 1 and out["uploaded"] == 1
    assert "already staged with different content" in out["failures"][0]["reason"]
    assert st.get_blob_client("birds/v1/d/x.jpg").download_blob().readall() == jpeg(3)

    st.delete_blob("birds/v1/d/x.jpg")
    st.upload_blob("birds/v1/d/x.jpg", jpeg(3))
    run_host(env, app_dir)  # now original/d/v1/x.jpg holds jpeg(3)
    rc, out = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1")
    assert rc == 1 and out["conflicts"] == 1
    assert "already ingested with different content" in out["failures"][0]["reason"]
    assert staged(clients, "birds/v1/") == {}


def test_killed_run_then_rerun_is_complete_without_partial_blobs(env, clients, tmp_path):
    src = tmp_path / "drop"
    (src / "k").mkdir(parents=True)
    expected = {}
    for i in range(120):
        data = jpeg(i, size=(160, 120), quality=95)
        (src / "k" / f"{i:03d}.jpg").write_bytes(data)
        expected[f"k/{i:03d}.jpg"] = md5(data)
    total_mbit = sum(os.path.getsize(p) for p in (src / "k").iterdir()) * 8 / 1e6
    cmd = [sys.executable, "-m", "corpus", "upload", str(src), "--domain", "birds", "--version", "v1",
           "--cap-mbps", f"{total_mbit / 6:.3f}", "--concurrency", "4"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(staged(clients, "birds/v1/")) >= 20, 60, "20 staged blobs")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = staged(clients, "birds/v1/")
    assert 20 <= len(partial) < 120
    assert all(expected[k] == v for k, v in partial.items())  # no partial or corrupt blob
    rc, out = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1")
    assert rc == 0 and out["uploaded"] == 120 - len(partial) and out["already_staged"] == len(partial)
    assert staged(clients, "birds/v1/") == expected


@pytest.mark.serial  # a measured rate: a busy CPU (other tests beside it) pulls it below the cap
def test_bandwidth_cap_holds_within_20_percent(env, clients, tmp_path):
    src = tmp_path / "drop"
    (src / "c").mkdir(parents=True)
    for i in range(40):
        (src / "c" / f"{i}.jpg").write_bytes(jpeg(i, size=(300, 300), quality=98) + os.urandom(60_000))
    cap = 8.0  # Mbit/s = 1 MB/s
    rc, out = upload(env, tmp_path, str(src), "--domain", "birds", "--version", "v1", "--cap-mbps", str(cap))
    assert rc == 0 and out["uploaded"] == 40
    measured = out["bytes_uploaded"] * 8 / 1e6 / out["seconds"]
    assert out["seconds"] > 2, "too short a run to measure a rate"
    assert abs(measured - cap) / cap <= 0.20, f"measured {measured:.2f} Mbit/s against a cap of {cap}"


def test_requests_in_flight_never_exceed_concurrency(settings, clients, tmp_path, monkeypatch):
    src = tmp_path / "drop"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        for i in range(25):
            (src / d / f"{i}.jpg").write_bytes(jpeg(i))
    # Counted where every request goes, whichever client sends it (the SDK through requests and
    # http.client, were anything to use it; the listings and Put Blobs through bloblist's socket
    # transport): from the request line to the response's arrival.
    from corpus.transfer import bloblist

    lock = threading.Lock()
    state = {"now": 0, "max": 0, "total": 0}
    putrequest, getresponse = http.client.HTTPConnection.putrequest, http.client.HTTPConnection.getresponse
    send = bloblist._StdlibTransport.send

    def started() -> None:
        with lock:
            state["now"] += 1
            state["total"] += 1
            state["max"] = max(state["max"], state["now"])

    def ended() -> None:
        with lock:
            state["now"] -= 1

    def counting_putrequest(self, *args, **kwargs):
        started()
        return putrequest(self, *args, **kwargs)

    def counting_getresponse(self, *args, **kwargs):
        try:
            return getresponse(self, *args, **kwargs)
        finally:
            ended()

    def counting_send(self, *args, **kwargs):
        started()
        try:
            return send(self, *args, **kwargs)
        finally:
            ended()

    monkeypatch.setattr(http.client.HTTPConnection, "putrequest", counting_putrequest)
    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", counting_getresponse)
    monkeypatch.setattr(bloblist._StdlibTransport, "send", counting_send)
    summary = Uploader(settings, UploadOptions(src, "birds", "v1", concurrency=3)).run()
    assert summary.uploaded == 75 and not summary.failures
    assert 1 < state["max"] <= 3, state
    # The puts, the flat page of staging and each folder's original/ listing were all counted.
    assert state["total"] >= 75 + 1 + 3, state


def test_upload_with_only_a_sas_lists_and_writes(azurite, settings, clients, tmp_path):
    # A connection string holding an account SAS and no key: the listings (corpus.transfer.bloblist) and
    # the writes (the SDK) both authorise with it. Signed with the newest version Azurite knows.
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob._shared.shared_access_signature import SharedAccessSignature

    from corpus.store.settings import Connection

    sas = SharedAccessSignature(ACCOUNT, azurite.key, x_ms_version="2025-11-05").generate_account(
        "b", "sco", "racwdl", datetime.now(UTC) + timedelta(hours=1)
    )
    endpoint = f"http://127.0.0.1:{azurite.ports['blob']}/{ACCOUNT}"
    sas_only = replace(settings, connection=Connection(f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"))
    src = tmp_path / "drop"
    (src / "a" / "b").mkdir(parents=True)
    expected = {}
    for i in range(6):
        (src / "a" / "b" / f"{i}.jpg").write_bytes(data := jpeg(i))
        expected[f"a/b/{i}.jpg"] = md5(data)
    first = Uploader(sas_only, UploadOptions(src, "birds", "v1", concurrency=4)).run()
    assert first.uploaded == 6 and not first.failures, first.failures
    assert staged(clients, "birds/v1/") == expected
    again = Uploader(sas_only, UploadOptions(src, "birds", "v1", concurrency=4, use_cache=False)).run()
    assert again.uploaded == 0 and again.already_staged == 6 and not again.failures


def test_the_sdk_free_sender_against_azurite(settings, clients):
    # Put Blob without the SDK (corpus.upload.sender): the container made on first use, the MD5
    # stored and checked by the service, never over an existing blob; MD5 of a blob stored without one.
    from corpus.domain.errors import StorageError
    from corpus.transfer.bloblist import BlobLister
    from corpus.upload.sender import RawSender

    sender = RawSender(BlobLister.from_connection(settings.connection), "fresh-staging")
    data = jpeg(1)
    digest = hashlib.md5(data).digest()
    assert sender.put("d/v/a b+c/ü.jpg", data, digest, "image/jpeg") is True
    blob = clients.container("fresh-staging").get_blob_client("d/v/a b+c/ü.jpg")
    props = blob.get_blob_properties()
    assert blob.download_blob().readall() == data and props.content_settings.content_type == "image/jpeg"
    assert bytes(props.content_settings.content_md5) == digest
    assert sender.put("d/v/a b+c/ü.jpg", jpeg(2), hashlib.md5(jpeg(2)).digest(), "image/jpeg") is False  # never over it
    assert blob.download_blob().readall() == data
    assert sender.remote_md5("d/v/a b+c/ü.jpg") == digest.hex()
    with pytest.raises(StorageError) as bad:  # the body does not match its Content-MD5: refused, nothing written
        sender.put("d/v/corrupt.jpg", data + b"x", digest, "image/jpeg")
    assert bad.value.status == 400 and not clients.container("fresh-staging").get_blob_client("d/v/corrupt.jpg").exists()
    clients.container("fresh-staging").upload_blob("d/v/no-md5.jpg", data)  # e.g. staged by another tool
    clients.container("fresh-staging").get_blob_client("d/v/no-md5.jpg").set_http_headers()  # clears the stored MD5
    assert sender.remote_md5("d/v/no-md5.jpg") == digest.hex()
