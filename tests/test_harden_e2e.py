"""Hardening against Azure's real limits and hostile inputs (issues 13 and 16), on a private Azurite."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import EdmType, EntityProperty
from azure.storage.blob import BlobClient, BlobType

from corpus.app import ingest
from corpus.app.runtime import Runtime
from corpus.devhost.listeners import host_id, receipts_partition
from corpus.domain import keys
from corpus.domain.messages import CopyRequest
from corpus.domain.paths import SetRef
from corpus.store.azure_ports import AzureBlobStore
from corpus.store.rows import ImageRow, as_int
from corpus.store.storage import Clients
from tests.support import jpeg, max_overlap, png, prepare_app_dir, run_cli, run_host

pytestmark = pytest.mark.e2e

GIB = 2**30


def _image(i: int, size: int) -> ImageRow:
    return ImageRow(
        f"f{i:04d}.jpg", f"original/big/v1/f{i:04d}.jpg", size, f"{i:032x}", "image/jpeg", 64, 48, f"big/v1/big/f{i}.jpg"
    )


# -- 16.1: 64-bit counts through the real record path ----------------------------------------


def test_counts_past_2_31_and_2_35_bytes_are_exact(rt: Runtime) -> None:
    ref = SetRef("huge", ("big",), "v1")
    rt.catalog.sets.ensure(ref, ["big"], blob_prefix=ref.original_prefix())
    # Three 1 GiB images one by one through group commit: the set passes 2**31 bytes.
    for i in range(3):
        assert rt.recorder.record(ref, _image(i, GIB))
    row = rt.catalog.sets.get(ref)
    assert row is not None and (row.image_count, row.total_bytes) == (3, 3 * GIB)
    # A batch of 33 more, one of them alone larger than Int32, past 2**35 bytes (32 GiB).
    batch = [_image(100 + i, GIB + i) for i in range(32)] + [_image(200, 2**33)]
    assert rt.catalog.images.record_many(ref, batch) == [True] * 33
    expected_bytes = 3 * GIB + sum(GIB + i for i in range(32)) + 2**33
    assert expected_bytes > 2**35
    assert rt.catalog.refresh_counts(ref) == (36, expected_bytes)
    row = rt.catalog.sets.get(ref)
    assert row is not None and (row.image_count, row.total_bytes) == (36, expected_bytes)
    assert rt.catalog.images.count(ref) == (36, expected_bytes)
    assert rt.catalog.images.get(ref, "f0200.jpg").size == 2**33  # type: ignore[union-attr]
    # Stored as Edm.Int64 on the wire, whatever the value.
    raw = rt.clients.table_client("ImageSets").get_entity("huge", keys.set_row_key(ref))
    assert isinstance(raw["TotalBytes"], EntityProperty) and raw["TotalBytes"].edm_type == EdmType.INT64


def test_rows_written_as_int32_keep_working(rt: Runtime) -> None:
    """Rows from before 64-bit counts (plain Python ints: Edm.Int32) are read, raised and rewritten."""
    ref = SetRef("legacy", (), "v1")
    pk = keys.image_partition_key(ref)
    sets, images = rt.clients.table_client("ImageSets"), rt.clients.table_client("Images")
    rt.catalog.sets.ensure(ref, [], blob_prefix=ref.original_prefix())
    sets.update_entity({"PartitionKey": "legacy", "RowKey": keys.set_row_key(ref), "ImageCount": 5, "TotalBytes": 1000})
    shard = keys.counter_row_key(3)
    images.create_entity({"PartitionKey": pk, "RowKey": shard, "Count": 5, "Bytes": 1000})
    assert type(images.get_entity(pk, shard)["Count"]) is int  # really Int32 on the wire
    row = rt.catalog.sets.get(ref)
    assert row is not None and (row.image_count, row.total_bytes) == (5, 1000)
    assert rt.catalog.images.count(ref) == (5, 1000)

    rt.catalog.images.batch_shard = shard  # the next batch raises the legacy shard itself
    assert rt.catalog.images.record_many(ref, [_image(1, 3 * GIB), _image(2, 10)]) == [True, True]
    assert rt.catalog.refresh_counts(ref) == (7, 1010 + 3 * GIB)
    updated = images.get_entity(pk, shard)
    assert (as_int(updated["Count"]), as_int(updated["Bytes"])) == (7, 1010 + 3 * GIB)
    row = rt.catalog.sets.get(ref)
    assert row is not None and (row.image_count, row.total_bytes) == (7, 1010 + 3 * GIB)


# -- 13.6: a 412 is recognised ----------------------------------------------------------------


def _stage_and_validate(rt: Runtime, name: str, data: bytes) -> CopyRequest:
    staging = rt.clients.container("staging")
    staging.upload_blob(name, data)
    etag = staging.get_blob_client(name).get_blob_properties().etag
    assert ingest.on_staged_blob(rt, ingest.StagedBlob(name, data, etag, {}), "queued") == "queued"
    body = rt.clients.queue_client("copy-requests").receive_message().content
    return CopyRequest.parse(body)


def test_a_staged_blob_replaced_before_its_copy_is_superseded_not_retried(rt: Runtime) -> None:
    """The copy's source condition fails with 412 SourceConditionNotMet: recognised as 'superseded'."""
    req = _stage_and_validate(rt, "sup/v1/a.jpg", jpeg(1))
    newer = jpeg(2)
    rt.clients.container("staging").upload_blob("sup/v1/a.jpg", newer, overwrite=True)
    assert ingest.on_copy_request(rt, req) == "superseded"
    assert not rt.clients.container("sup").get_blob_client("original/v1/a.jpg").exists()
    assert rt.clients.container("staging").get_blob_client("sup/v1/a.jpg").download_blob().readall() == newer


# -- 13.1: crafted copy requests --------------------------------------------------------------


def test_crafted_copy_requests_are_refused(env: dict[str, str], rt: Runtime, clients: Clients, app_dir: Path) -> None:
    staging = clients.container("staging")
    # An HTML file named .jpg, and a request for it sent before the trigger could reject it,
    # in schema 1, claiming to be a validated JPEG.
    staging.upload_blob("web/v1/evil.jpg", b"<html><script>alert(1)</script></html>")
    etag = staging.get_blob_client("web/v1/evil.jpg").get_blob_properties().etag
    claim = {"size": 38, "md5": "0" * 32, "content_type": "image/jpeg", "width": 1, "height": 1, "format": "JPEG"}
    crafted = {"kind": "copy", "v": 1, "staged_name": "web/v1/evil.jpg", "staged_etag": etag, **claim}
    rt.send("copy-requests", json.dumps(crafted))
    summary = run_host(env, app_dir)
    assert summary["ok"]["copy_to_original"] >= 1
    web = clients.container("web")
    assert not web.exists() or list(web.list_blobs(name_starts_with="original/")) == []
    assert clients.container("rejected").get_blob_client("web/v1/evil.jpg").exists()
    failures = [f for f in rt.catalog.failures.list() if f.source == "copy-requests"]
    assert len(failures) == 1 and "never validated" in failures[0].reason and failures[0].final
    # The poison queue's recorder took the message and kept the app's row (insert-only).
    assert clients.queue_client("copy-requests-poison").get_queue_properties().approximate_message_count == 0

    # A good image is ingested; then a request naming it again, claiming text/html, changes nothing.
    good = jpeg(3)
    staging.upload_blob("web/v1/ok.jpg", good)
    run_host(env, app_dir)
    original = clients.container("web").get_blob_client("original/v1/ok.jpg")
    assert original.get_blob_properties().content_settings.content_type == "image/jpeg"
    staging.upload_blob("web/v1/ok.jpg", good)  # staged again, same bytes: a new ETag, never validated
    etag = staging.get_blob_client("web/v1/ok.jpg").get_blob_properties().etag
    rt.send(
        "copy-requests", json.dumps({**crafted, "staged_name": "web/v1/ok.jpg", "staged_etag": etag, "content_type": "text/html"})
    )
    rt.send("copy-requests", CopyRequest("web/v1/ok.jpg", etag).to_json())
    rt.clients.table_client("DevHostBlobReceipts").upsert_entity(  # the trigger is not to run on it
        {
            "PartitionKey": receipts_partition(host_id(app_dir, env), "ingest_staged_blob", "staging"),
            "RowKey": keys.escape("web/v1/ok.jpg"),
            "Name": "web/v1/ok.jpg",
            "ETag": etag,
        }
    )
    run_host(env, app_dir)
    assert original.get_blob_properties().content_settings.content_type == "image/jpeg"
    row = rt.catalog.sets.get(SetRef("web", (), "v1"))
    assert row is not None and (row.image_count, row.total_bytes) == (1, len(good))
    assert clients.queue_client("copy-requests-poison").get_queue_properties().approximate_message_count == 0
    assert len([f for f in rt.catalog.failures.list() if f.source == "copy-requests"]) == 3  # recorded, one each


# -- 16.2: asynchronous copies that fail ------------------------------------------------------


class AsyncCopyDest:
    """A destination BlobClient whose first copy Azure-style reports ``pending``, then ``failed``.

    The first copy really happens (the destination exists, as in Azure); property reads then say
    pending once and failed after, until the destination is deleted. Everything else is the real
    client, so deletes and conditions run against Azurite.
    """

    def __init__(self, real: BlobClient) -> None:
        self._real = real
        self.copies = 0
        self.reads_after_first = 0
        self.deleted_with_etag: list[str] = []
        self._failing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def start_copy_from_url(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        result = self._real.start_copy_from_url(*args, **kwargs)
        self.copies += 1
        if self.copies == 1:
            self._failing = True
            return {**result, "copy_status": "pending"}
        return result

    def get_blob_properties(self, **kwargs: Any) -> Any:
        props = self._real.get_blob_properties(**kwargs)
        if self._failing:
            self.reads_after_first += 1
            props.copy.status = "pending" if self.reads_after_first == 1 else "failed"
            props.copy.status_description = "500 InternalError: source changed during copy (simulated)"
        return props

    def delete_blob(self, **kwargs: Any) -> None:
        self._real.delete_blob(**kwargs)
        self.deleted_with_etag.append(str(kwargs.get("etag")))
        self._failing = False


class AsyncCopyStore(AzureBlobStore):
    """The real Azure adapter, whose client for one destination is an :class:`AsyncCopyDest`."""

    def __init__(self, clients: Clients, dest: AsyncCopyDest) -> None:
        super().__init__(clients)
        self.dest = dest

    def _blob(self, container: str, name: str) -> BlobClient:
        if (container, name) == ("async", "original/v1/x.jpg"):
            return self.dest  # type: ignore[return-value]
        return super()._blob(container, name)


def test_a_failed_asynchronous_copy_is_cleared_on_its_etag_and_copied_again(rt: Runtime) -> None:
    data = jpeg(9)
    req = _stage_and_validate(rt, "async/v1/x.jpg", data)
    v = rt.catalog.validations.get(req.staged_name, req.staged_etag)
    assert v is not None
    src = rt.clients.container("staging").get_blob_client("async/v1/x.jpg")
    rt.ensure_container("async")
    real = rt.clients.container("async").get_blob_client("original/v1/x.jpg")
    dest = AsyncCopyDest(real)
    store = AsyncCopyStore(rt.clients, dest)
    assert ingest._ensure_original(store, v, "staging", "async", "original/v1/x.jpg") == "copied"
    assert dest.copies == 2 and len(dest.deleted_with_etag) == 1 and dest.deleted_with_etag[0] not in ("", "None")
    assert real.download_blob().readall() == data

    # A destination left failed by an earlier delivery: "exists", then cleared and copied again.
    real.delete_blob()
    real.start_copy_from_url(src.url)
    dest = AsyncCopyDest(real)
    dest.copies = 1  # the failed copy is the earlier delivery's
    dest._failing = True
    store = AsyncCopyStore(rt.clients, dest)
    assert ingest._ensure_original(store, v, "staging", "async", "original/v1/x.jpg") == "copied"
    assert len(dest.deleted_with_etag) == 1 and real.download_blob().readall() == data


def test_names_normalised_limited_and_escaped_end_to_end(
    env: dict[str, str], rt: Runtime, clients: Clients, app_dir: Path, tmp_path: Path
) -> None:
    staging = clients.container("staging")
    nfc, nfd = unicodedata.normalize("NFC", "café.jpg"), unicodedata.normalize("NFD", "café.jpg")
    staging.upload_blob(f"names/v1/{nfc}", jpeg(1))
    staging.upload_blob(f"names/v1/{nfd}", jpeg(2))  # another image under the same name
    long_name = "names/v1/" + "鳥" * 230 + ".jpg"  # 239 characters, 2 KiB+ as a copy-source URL
    staging.upload_blob(long_name, jpeg(3))
    staging.upload_blob("names/v1/a\nFORGED: all good.jpg", jpeg(4))
    staging.upload_blob("names/v1/appendable.jpg", jpeg(5), blob_type=BlobType.APPENDBLOB)
    too_long = "names/v1/" + "n" * 900 + ".jpg"  # fits as an original, not as a transformed name
    staging.upload_blob(too_long, jpeg(6))
    run_host(env, app_dir)

    originals = [b.name for b in clients.container("names").list_blobs()]
    assert originals == [f"original/v1/{nfc}"]
    rejected = {r.name: r.reason for r in rt.catalog.rejections.list("rejected")}
    others = {long_name, "names/v1/a\nFORGED: all good.jpg", "names/v1/appendable.jpg", too_long}
    assert "transformed name can reach" in rejected[too_long] and "1024" in rejected[too_long]
    assert set(rejected) - others in ({f"names/v1/{nfc}"}, {f"names/v1/{nfd}"})  # one of the two forms
    assert rejected[(set(rejected) - others).pop()].startswith("conflict:")
    assert "only block blobs" in rejected["names/v1/appendable.jpg"]
    assert "percent-encoded URL" in rejected[long_name]
    assert clients.container("rejected").get_blob_client(long_name).download_blob().readall() == jpeg(3)
    assert "control character U+000A" in rejected["names/v1/a\nFORGED: all good.jpg"]
    assert list(staging.list_blobs()) == []

    out = run_cli(env, tmp_path, "status").stdout
    assert "a\\nFORGED" in out and not any(line.lstrip().startswith("FORGED") for line in out.splitlines())


# -- 16.5, 16.6: poison queues exist and keep their messages; blob triggers follow extensions.blobs


def test_blob_trigger_follows_blob_settings_and_the_app_s_poison_messages_are_recorded(
    env: dict[str, str], rt: Runtime, clients: Clients, tmp_path: Path
) -> None:
    queues = {q.name for q in clients.queue.list_queues()}
    assert {"copy-requests-poison", "transform-requests-poison", "transform-jobs-poison", "webjobs-blobtrigger-poison"} <= queues

    app = prepare_app_dir(tmp_path, {"batchSize": 16, "newBatchThreshold": 8})
    host = json.loads((app / "host.json").read_text())
    host["extensions"]["blobs"] = {"maxDegreeOfParallelism": 2, "poisonBlobThreshold": 2}
    # A tag extractor that fails (not permanently) for one folder: the trigger fails on that blob.
    (tmp_path / "boomtags.py").write_text(
        "def tags(dirs):\n    if 'boom' in dirs:\n        raise RuntimeError('boom')\n    return list(dirs)\n"
    )
    env = {**env, "PYTHONPATH": f"{tmp_path}{os.pathsep}{env.get('PYTHONPATH', '')}", "CORPUS_TAG_EXTRACTOR": "boomtags:tags"}
    clients.container("staging").upload_blob("par/v1/boom/x.png", png(99))
    (app / "host.json").write_text(json.dumps(host))
    for i in range(10):
        clients.container("staging").upload_blob(f"par/v1/{i}.png", png(i, (400, 400)))
    rt.send("copy-requests", "not a copy request")
    trace = tmp_path / "trace.jsonl"
    summary = run_host(env, app, "--trace", str(trace))
    assert summary["ok"]["ingest_staged_blob"] == 10
    assert summary["failed"]["ingest_staged_blob"] == 2  # poisonBlobThreshold, not maxDequeueCount (5)
    assert max_overlap(trace, "ingest_staged_blob") <= 2  # not the queue settings' 24
    (blob_poison,) = clients.queue_client("webjobs-blobtrigger-poison").peek_messages()
    assert json.loads(blob_poison.content)["BlobName"] == "par/v1/boom/x.png"
    # The host poisons with the queue's default time-to-live (7 days), as the real one does
    # (QueueProcessor.CopyMessageToPoisonQueueAsync); the failure itself is kept in the Failures table.
    lifetime = blob_poison.expires_on - blob_poison.inserted_on
    assert abs(lifetime.total_seconds() - 7 * 86400) < 60
    assert [p["queue"] for p in summary["poisoned"]] == ["webjobs-blobtrigger-poison"]
    # The app's own poison message (sent with TTL -1) is taken by the poison queue's recorder, and
    # its Failures row, which never expires, keeps the body and the app's reason.
    assert clients.queue_client("copy-requests-poison").peek_messages() == []
    assert summary["ok"]["copy_to_original_poisoned"] == 1
    (failure,) = [f for f in rt.catalog.failures.list() if f.source == "copy-requests"]
    assert failure.body == "not a copy request" and failure.reason.startswith("MessageError")


# -- 13.12: the prefix trap ---------------------------------------------------------------------


def test_a_root_set_named_like_a_version_never_sees_the_set_below_it(
    env: dict[str, str], rt: Runtime, clients: Clients, app_dir: Path, tmp_path: Path
) -> None:
    """Root set ``v2`` has BlobPath ``original/v2/``, which also holds set ``v2@v1`` (``original/v2/v1/…``)."""
    staging = clients.container("staging")
    staging.upload_blob("pfx/v2/a.jpg", jpeg(1, (320, 240)))  # root set, version v2
    staging.upload_blob("pfx/v1/v2/b.jpg", jpeg(2, (320, 240)))  # set v2, version v1
    run_host(env, app_dir)
    assert sorted(b.name for b in clients.container("pfx").list_blobs()) == ["original/v2/a.jpg", "original/v2/v1/b.jpg"]
    sets = {
        (r["path"], r["version"]): (r["images"], r["blob_path"])
        for r in json.loads(run_cli(env, tmp_path, "sets", "--json").stdout)
    }
    assert sets == {("<root>", "v2"): (1, "original/v2/"), ("v2", "v1"): (1, "original/v2/v1/")}

    request = {
        "domain": "pfx",
        "source": {"path": "<root>", "version": "v2"},
        "transform": {"name": "thumbnail", "version": "1", "args": {"size": 32}},
    }
    rt.send("transform-requests", json.dumps(request))
    run_host(env, app_dir)
    transformed = sorted(b.name for b in clients.container("pfx").list_blobs(name_starts_with="transform/"))
    assert len(transformed) == 1 and "/a." in transformed[0]  # b.jpg is not in the root set


# -- 13.7 and 16.7: fixes made on main before this branch, tested here --------------------------


def test_undecodable_names_are_each_sent_skipped_or_failed_and_nothing_hangs(env: dict[str, str], tmp_path: Path) -> None:
    """Non-UTF-8 file and folder names at --concurrency 2, into an account without a staging container."""
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    for i in range(4):
        (src / "ok" / f"{i}.jpg").write_bytes(jpeg(i))
    root = os.fsencode(src)
    for i in range(3):
        with open(root + b"/ok/bad" + bytes([0xFF, 0xF0 + i]) + b".jpg", "wb") as f:
            f.write(jpeg(10 + i))
    os.mkdir(root + b"/dir\xfe")
    with open(root + b"/dir\xfe/x.jpg", "wb") as f:
        f.write(jpeg(20))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "corpus",
            "upload",
            str(src),
            "--domain",
            "und",
            "--version",
            "v1",
            "--concurrency",
            "2",
            "--json",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,  # a hang fails here
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout)
    accounted = summary["uploaded"] + summary["failed"] + summary["conflicts"] + sum(summary["skipped"].values())
    assert summary["uploaded"] == 4 and accounted == 8, summary
    assert proc.returncode == 1 and len(summary["failures"]) == 4
    assert all(f["reason"] for f in summary["failures"])


def test_a_counter_race_between_batches_retries_as_a_batch(rt: Runtime) -> None:
    from corpus.store.images_table import ImagesTable

    ref = SetRef("race", ("b",), "v1")
    a, b = ImagesTable(rt.clients.table_client("Images")), ImagesTable(rt.clients.table_client("Images"))
    a.batch_shard = b.batch_shard = keys.counter_row_key(7)
    fallbacks: list[str] = []
    a.record = lambda ref, r, transform=None: fallbacks.append(r.file) or True  # type: ignore[method-assign]
    b.record_many(ref, [_image(900, 5)])  # the shard exists
    real = a.table.get_entity
    raced: list[bool] = []

    def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
        try:
            return real(*args, **kwargs)  # the shard, or ResourceNotFoundError: then a creates it
        finally:
            if not raced:  # another instance commits into the same shard between our read and our write
                raced.append(True)
                assert b.record_many(ref, [_image(1000 + i, 10) for i in range(5)]) == [True] * 5

    a.table.get_entity = read_then_lose_the_race  # type: ignore[method-assign]
    assert a.record_many(ref, [_image(2000 + i, 100) for i in range(50)]) == [True] * 50
    assert raced and fallbacks == []  # retried as one batch, not 50 single transactions
    assert a.count(ref) == (56, 5 + 50 + 5000)
