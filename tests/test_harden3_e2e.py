"""Hardening round 3 (issue 25), end to end: the real ``corpus host`` on a private Azurite.

Each test failed on the code before its fix (the closing note of issue 25 says how each was checked).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corpus.app.runtime import Runtime
from corpus.domain.errors import StorageError
from corpus.domain.paths import SetRef
from corpus.store.azure_ports import AzureBlobStore
from corpus.store.ports import iter_blobs
from corpus.store.settings import Settings
from tests.support import Azurite, ingest, photo, prepare_app_dir, run_cli, run_host, serving_host

pytestmark = pytest.mark.e2e


@dataclass
class Served:
    base: str
    env: dict[str, str]
    rt: Runtime
    app_dir: Path

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, {k.lower(): v for k, v in res.headers.items()}, res.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two photos ingested by the host, then the host serving HTTP."""
    tmp = tmp_path_factory.mktemp("harden3")
    az = Azurite(tmp).start()

    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
        conn = az.connection_string
        env = {**base, "CorpusStorage": conn, "AzureWebJobsStorage": conn, "PYTHONUNBUFFERED": "1"}
        rt = Runtime.create(Settings.from_env(env))
        rt.ensure_resources()
        app_dir = prepare_app_dir(tmp)
        for i in range(2):
            rt.blobs.put(rt.settings.staging_container, f"birds/v1/red/{i}.jpg", photo(i), "image/jpeg")
        run_host(env, app_dir)
        with serving_host(env, app_dir, tmp) as url:
            yield Served(url, env, rt, app_dir)
    finally:
        az.stop()


# -- B8: If-None-Match: * on /gallery/{domain}/file ---------------------------------------------


FILE = "/gallery/birds/file?blob=original/red/v1/0.jpg"


def test_if_none_match_star_and_lists_on_a_stored_image_follow_rfc_9110(served: Served) -> None:
    """B8: ``If-None-Match: *`` on an existing image answered 503 (Azurite/Azure refuse a read
    conditioned on ``*``). RFC 9110 13.1.2: ``*`` is false when the resource exists, and a GET or
    HEAD whose If-None-Match is false is answered 304; a list matches if any tag matches (weakly)."""
    status, headers, body = served.get(FILE)
    assert status == 200 and body[:2] == b"\xff\xd8"
    etag = headers["etag"]
    for method in ("GET", "HEAD"):
        status, h, body = served.get(FILE, {"If-None-Match": "*"}, method)
        assert (status, body, h.get("etag")) == (304, b"", etag), method
    for value in (f'"nope", {etag}', f"W/{etag}"):
        status, h, body = served.get(FILE, {"If-None-Match": value})
        assert (status, body) == (304, b""), value
    status, _, body = served.get(FILE, {"If-None-Match": '"nope", W/"other"'})
    assert status == 200 and body[:2] == b"\xff\xd8"
    # No such image: '*' is true, the request goes on and finds nothing
    status, _, _ = served.get("/gallery/birds/file?blob=original/red/v1/none.jpg", {"If-None-Match": "*"})
    assert status == 404
    # A preview not made yet: '*' is true, it is rendered and served; once made, '*' is 304
    preview = "/gallery/birds/preview?blob=original/red/v1/1.jpg"
    status, _, body = served.get(preview, {"If-None-Match": "*"})
    assert status == 200 and body
    status, _, body = served.get(preview, {"If-None-Match": "*"})
    assert (status, body) == (304, b"")


# -- R9: names with a '.' or '..' segment ---------------------------------------------------------


def put_raw(rt: Runtime, container: str, name: str, data: bytes) -> None:
    """Put Blob with ``name`` exactly as given (an HTTP client that keeps dot segments, a container
    SAS): how a '..' name gets into staging. The SDKs normalise the URL path (and a shared-key
    signature then no longer matches), so they cannot write such a name."""
    import http.client
    from datetime import UTC, datetime, timedelta
    from urllib.parse import urlsplit

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    client = rt.clients.container(container)
    perms = ContainerSasPermissions(write=True, create=True)
    expiry = datetime.now(UTC) + timedelta(hours=1)
    key = client.credential.account_key
    sas = generate_container_sas(
        client.account_name, container, account_key=key, permission=perms, expiry=expiry, version="2025-05-05"
    )
    url = urlsplit(rt.blobs.url(container))
    conn = http.client.HTTPConnection(url.hostname or "", url.port)
    headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2025-05-05", "Content-Type": "image/jpeg"}
    conn.request("PUT", f"{url.path}/{name}?{sas}", body=data, headers=headers)
    res = conn.getresponse()
    assert res.status == 201, res.read()
    conn.close()


DOTTED = ("birds/v1/red/../x.jpg", "birds/v1/./y.jpg", "birds/v1/red/../../../staging/birds/v1/z.jpg")


def test_dot_segment_names_are_rejected_in_place_and_the_host_goes_idle(env: dict[str, str], rt: Runtime, app_dir: Path) -> None:
    """R9: a staged name with a '.' or '..' segment is never copied, moved, deleted or re-driven
    (a client normalises its URL to another blob, even another container): ``host --until-idle``
    finishes while it stays staged (before: it re-read it forever); the reconciler records it as a
    rejection with its reason, without downloading it, once per version."""
    from corpus.app.reconcile import reconcile

    staging = rt.settings.staging_container
    for i, name in enumerate(DOTTED):
        put_raw(rt, staging, name, photo(i))
    rt.blobs.put(staging, "birds/v1/red/ok.jpg", photo(9), "image/jpeg")
    summary = run_host(env, app_dir, timeout=90)  # exits when idle
    assert summary["ok"] == {"ingest_staged_blob": 1}  # CORPUS_INGEST=direct: copied inside the trigger
    assert rt.catalog.images.get(SetRef("birds", ("red",), "v1"), "ok.jpg") is not None
    poisoned = rt.outbox.receive("webjobs-blobtrigger-poison", 32, 5)
    assert sorted(json.loads(m.text)["BlobName"] for m in poisoned) == sorted(DOTTED)
    assert [b.name for b in iter_blobs(rt.blobs, rt.settings.rejected_container)] == []
    report = reconcile(rt, grace_seconds=0)
    assert report.downloaded == 0 and not report.redriven and not report.failed
    assert sorted(report.refused) == sorted(DOTTED)
    rejected = {r.name: r for r in rt.catalog.rejections.list("rejected")}
    for name in DOTTED:
        assert "'.' or '..' segment" in rejected[name].reason and rejected[name].kept_as == "", name
    assert sorted(b.name for b in iter_blobs(rt.blobs, staging)) == sorted(DOTTED)  # left for an operator
    again = reconcile(rt, grace_seconds=0)  # recorded once per version: nothing read, nothing recorded
    assert again.downloaded == 0 and not again.refused and again.skipped_recent == len(DOTTED)
    assert run_host(env, app_dir, timeout=60)["ok"] == {}  # a restarted host remembers the poisoned versions


# -- B5: a build whose message reached the poison queue ----------------------------------------------


class _FailingBlocks(AzureBlobStore):
    """Put Block fails (as a timeout or a kill would), every attempt: the message ends in the poison queue."""

    def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None:
        raise StorageError("injected: Put Block timed out", 500, "OperationTimedOut")


def _stuck_build(rt: Runtime, name: str) -> None:
    """Register a build and fail it the way a poisoned message leaves it: ``building``, no message."""
    from dataclasses import replace

    from corpus.app.trainsets import on_trainset_message
    from corpus.domain.trainsets import TrainsetRequest, parse_trainset_message

    source = {"domain": "birds", "path": "red", "version": "v1"}
    body = {"trainset": {"name": name, "version": "1"}, "sources": [source], "split": {"train": 100}}
    failing = replace(rt, blobs=_FailingBlocks(rt.clients))
    request = TrainsetRequest.parse(json.dumps(body)).to_json()
    for _ in range(rt.queues.max_dequeue_count):
        with pytest.raises(StorageError):
            on_trainset_message(failing, parse_trainset_message(request))
    row = rt.catalog.training.trainsets.get(name, "1")
    assert row is not None and row.status == "building"


def test_a_build_left_building_is_resumed_by_the_cli_and_by_reconciliation(
    env: dict[str, str], rt: Runtime, clients: Any, app_dir: Path
) -> None:
    """B5: before, a build whose message was poisoned stayed ``building`` forever and nothing could
    resume it (``trainset create`` of it again: ``"queued": false``). Now ``corpus trainset resume
    N:V`` re-sends it, ``corpus reconcile`` resumes every build with no progress for the bound
    (``--stuck-after``), and so does ``trainset create`` of the same definition; the host finishes them."""
    ingest(env, clients, app_dir, {f"birds/v1/red/{i}.jpg": photo(i) for i in range(3)})
    _stuck_build(rt, "cli")
    _stuck_build(rt, "timer")
    run_host(env, app_dir, timeout=60)
    assert rt.catalog.training.trainsets.get("cli", "1").status == "building"  # type: ignore[union-attr]

    proc = run_cli(env, app_dir.parent, "trainset", "resume", "cli:1", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["queued"] is True, proc.stderr
    run_host(env, app_dir, timeout=60)
    assert rt.catalog.training.trainsets.require_ready("cli", "1").state.images == 3
    assert rt.catalog.training.trainsets.get("timer", "1").status == "building"  # type: ignore[union-attr]

    proc = run_cli(env, app_dir.parent, "reconcile", "--json")  # the default bound: not stuck long enough yet
    assert proc.returncode == 0 and json.loads(proc.stdout)["resumed_trainsets"] == [], proc.stderr
    proc = run_cli(env, app_dir.parent, "reconcile", "--stuck-after", "0", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["resumed_trainsets"] == ["timer:1"], proc.stderr
    run_host(env, app_dir, timeout=60)
    ready = rt.catalog.training.trainsets.require_ready("timer", "1")
    assert ready.state.images == 3 and ready.sha256 == rt.catalog.training.trainsets.require_ready("cli", "1").sha256

    # `trainset create` of the same definition: a build in progress is left alone, a stuck one resumed
    _stuck_build(rt, "again")
    create = ("trainset", "create", "--name", "again", "--version", "1", "--domain", "birds", "--path", "red")
    create += ("--set-version", "v1", "--json")
    proc = run_cli(env, app_dir.parent, *create)
    assert proc.returncode == 0 and json.loads(proc.stdout)["queued"] is False, proc.stderr
    proc = run_cli(env, app_dir.parent, *create, "--stuck-after", "0")
    assert proc.returncode == 0 and json.loads(proc.stdout)["resumed"] is True, proc.stderr
    run_host(env, app_dir, timeout=60)
    assert rt.catalog.training.trainsets.require_ready("again", "1").state.images == 3


# -- R10: verify --deep re-reads bytes ----------------------------------------------------------------


def test_verify_deep_catches_an_overwrite_that_kept_the_old_content_md5(
    env: dict[str, str], rt: Runtime, clients: Any, app_dir: Path
) -> None:
    """R10: ``trainset verify`` compares the stored Content-MD5 property, which an overwrite can
    keep (Set Blob Properties writes any value): it passes. ``--deep`` hashes the bytes it reads
    (paced by ``--rate``) and names the changed blob."""
    from azure.storage.blob import ContentSettings

    from corpus.domain.trainsets import TrainsetRequest

    ingest(env, clients, app_dir, {f"birds/v1/red/{i}.jpg": photo(i) for i in range(3)})
    body = {"trainset": {"name": "deep", "version": "1"}, "sources": [{"domain": "birds", "path": "red", "version": "v1"}]}
    rt.send(rt.settings.trainset_queue, TrainsetRequest.parse(json.dumps(body)).to_json())
    run_host(env, app_dir)
    cwd = app_dir.parent
    proc = run_cli(env, cwd, "trainset", "verify", "deep:1", "--deep", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["bytes_read"] > 0, proc.stderr

    blob = clients.container("birds").get_blob_client("original/red/v1/1.jpg")
    old = blob.get_blob_properties().content_settings
    blob.upload_blob(photo(77), overwrite=True)
    blob.set_http_headers(ContentSettings(content_type=old.content_type, content_md5=old.content_md5))
    assert blob.get_blob_properties().content_settings.content_md5 == old.content_md5

    shallow = run_cli(env, cwd, "trainset", "verify", "deep:1", "--json")
    assert shallow.returncode == 0 and json.loads(shallow.stdout)["problems"] == []  # the property was kept
    deep = run_cli(env, cwd, "trainset", "verify", "deep:1", "--deep", "--rate", "5", "--json")
    assert deep.returncode == 1, deep.stderr
    problems = json.loads(deep.stdout)["problems"]
    assert [(p["problem"], p["blob"]) for p in problems] == [("changed", "birds/original/red/v1/1.jpg")]
