"""End to end: paged transform fan-out, crafted jobs refused, ``count --op`` against the blobs."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from corpus.domain import keys
from corpus.domain.paths import SetRef
from corpus.store.rows import as_int
from tests.support import ingest, run_cli, run_host
from tests.support import photo as support_photo

pytestmark = pytest.mark.e2e


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    return support_photo(seed, size)


def request(clients, domain: str, source: dict, name: str, tversion: str, args: dict | None = None) -> None:
    body = {"domain": domain, "source": source, "transform": {"name": name, "version": tversion, "args": args or {}}}
    clients.queue_client("transform-requests").send_message(json.dumps(body))


def transformed(clients, domain: str) -> set[str]:
    return {b.name for b in clients.container(domain).list_blobs(name_starts_with="transform/")}


def test_a_request_forced_into_many_pages_queues_one_job_per_image_under_duplicate_delivery(env, clients, app_dir):
    files = {f"birds/v1/{d}/robin/{i:02d}.jpg": photo(i) for d, n in (("red", 20), ("blue", 1), ("green", 24)) for i in range(n)}
    files |= {"birds/v1/red/jay/x.jpg": photo(99)}  # carries 'red' but not 'robin': not selected
    ingest(env, clients, app_dir, files)
    request(clients, "birds", {"tags": ["robin"]}, "thumbnail", "1", {"size": 16})
    summary = run_host({**env, "CORPUS_TRANSFORM_PAGE_SIZE": "2"}, app_dir, "--deliver-twice")

    expected = {
        f"transform/thumbnail/1/{d}/robin/v1/{i:02d}.jpg" for d, n in (("red", 20), ("blue", 1), ("green", 24)) for i in range(n)
    }
    assert transformed(clients, "birds") == expected and len(expected) == 45
    # Every message is delivered twice: 2 invocations per job message means one job message per image.
    assert summary["ok"]["transform_job"] == 2 * 45
    pages = summary["ok"]["transform_request"] // 2
    assert pages >= 23
    markers = list(
        clients.table_client("ImageTransforms").query_entities("PartitionKey ge '!page!' and PartitionKey lt '!page\"'")
    )
    assert len(markers) == pages and sum(as_int(m["Jobs"]) for m in markers) == 45
    for d, n in (("red", 20), ("blue", 1), ("green", 24)):
        ref = SetRef("birds", (d, "robin"), "v1")
        entity = clients.table_client("ImageSets").get_entity("birds", keys.set_row_key(ref, ("thumbnail", "1")))
        assert as_int(entity["ImageCount"]) == n

    # Re-requesting queues nothing new.
    request(clients, "birds", {"tags": ["robin"]}, "thumbnail", "1", {"size": 16})
    again = run_host({**env, "CORPUS_TRANSFORM_PAGE_SIZE": "2"}, app_dir)
    assert again["ok"].get("transform_job", 0) == 0


def test_crafted_jobs_render_the_registered_args_or_are_refused(env, clients, app_dir, tmp_path):
    ingest(env, clients, app_dir, {"birds/v1/red/robin/a.jpg": photo(1), "birds/v1/blue/b.jpg": photo(2)})
    request(clients, "birds", {"path": "red/robin", "version": "v1"}, "thumbnail", "1", {"size": 32})
    run_host(env, app_dir)
    ingest(env, clients, app_dir, {"birds/v1/red/robin/late.jpg": photo(3)})
    job = {"kind": "transform-job", "v": 1, "domain": "birds", "dirs": ["red", "robin"], "version": "v1", "file": "late.jpg"}
    q = clients.queue_client("transform-jobs")
    q.send_message(json.dumps(job | {"name": "thumbnail", "tversion": "1", "args": {"size": 1}}))  # args planted
    q.send_message(json.dumps(job | {"name": "grayscale", "tversion": "9", "args": {}}))  # never registered
    q.send_message(json.dumps(job | {"name": "thumbnail", "tversion": "1/red", "args": {}}))  # another slot
    q.send_message(json.dumps(job | {"v": 2, "dirs": ["blue"], "file": "nope.jpg", "name": "thumbnail", "tversion": "1"}))
    run_host(env, app_dir)
    # Poisoned by the app with a reason; the poison queue's recorder drained them (one row each, below).
    assert clients.queue_client("transform-jobs-poison").get_queue_properties().approximate_message_count == 0
    assert transformed(clients, "birds") == {
        "transform/thumbnail/1/red/robin/v1/a.jpg",
        "transform/thumbnail/1/red/robin/v1/late.jpg",
    }
    late = clients.container("birds").get_blob_client("transform/thumbnail/1/red/robin/v1/late.jpg").download_blob().readall()
    assert Image.open(io.BytesIO(late)).size == (32, 24)  # the registered size, not the message's
    rows = json.loads(run_cli(env, tmp_path, "sets", "--domain", "birds", "--transform", "grayscale", "--json").stdout)
    assert rows == []
    reasons = [f["Reason"] for f in json.loads(run_cli(env, tmp_path, "status", "--json").stdout)["failures"]["latest"]]
    assert len(reasons) == 3
    assert any("grayscale:9 is not registered" in r for r in reasons)
    assert any("invalid transform version '1/red'" in r for r in reasons)
    assert any("original/blue/v1/nope.jpg is not a recorded original" in r for r in reasons)


def test_names_that_collided_before_get_two_outputs(env, clients, app_dir):
    ingest(env, clients, app_dir, {"birds/v1/x/x.png.jpg": photo(1)})
    st = clients.container("staging")
    img = io.BytesIO()
    Image.new("RGB", (20, 10)).save(img, "PNG")
    st.upload_blob("birds/v1/x/x.png", img.getvalue())
    run_host(env, app_dir)
    request(clients, "birds", {"path": "x", "version": "v1"}, "format", "1", {"format": "jpeg"})
    run_host(env, app_dir)
    assert transformed(clients, "birds") == {"transform/format/1/x/v1/x.png.jpg", "transform/format/1/x/v1/x.png.jpg.jpg"}


def test_count_by_operation_equals_a_brute_force_count_over_the_blobs(env, clients, app_dir, tmp_path):
    sets = {("red", "robin"): 3, ("blue", "robin"): 2, ("red", "jay"): 2}
    ingest(env, clients, app_dir, {f"birds/v1/{a}/{b}/{i}.jpg": photo(i) for (a, b), n in sets.items() for i in range(n)})
    crop_in_pipeline = {"steps": [{"name": "grayscale"}, {"name": "crop", "args": {"aspect": "4:3"}}]}
    defs = {
        ("crop", "1"): ({"tags": ["red"]}, {"aspect": "1:1"}),
        ("crop", "2"): ({"path": "red/robin", "version": "v1"}, {"box": [0, 0, 8, 8]}),
        ("pipeline", "p"): ({"tags": ["robin"]}, crop_in_pipeline),
        ("thumbnail", "1"): ({"tags": ["red"]}, {"size": 8}),
    }
    for (name, tversion), (source, args) in defs.items():
        request(clients, "birds", source, name, tversion, args)
    run_host(env, app_dir)

    def brute(tag: str, with_crop: set[tuple[str, str]]) -> dict[str, int]:
        outputs = [
            b.split("/")
            for b in transformed(clients, "birds")
            if tuple(b.split("/")[1:3]) in with_crop and tag in b.split("/")[3:5]
        ]
        return {
            "images": len(outputs),
            "sets": len({tuple(o[:-1]) for o in outputs}),
            "sources": len({"/".join(o[3:]) for o in outputs}),
        }

    crops = {("crop", "1"), ("crop", "2"), ("pipeline", "p")}

    def count(*args: str) -> dict:
        proc = run_cli(env, tmp_path, "count", "--domain", "birds", *args, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert count("--tag", "red", "--op", "crop") == brute("red", crops) == {"images": 11, "sets": 4, "sources": 5}
    assert count("--tag", "robin", "--op", "crop") == brute("robin", crops) == {"images": 11, "sets": 4, "sources": 5}
    assert count("--tag", "red", "--transform", "crop:2") == {"images": 3, "sets": 1, "sources": 3}
    assert count("--tag", "robin", "--op", "grayscale") == {"images": 5, "sets": 2, "sources": 5}
    assert count("--tag", "red") == {"images": 5, "sets": 2}
    bad = run_cli(env, tmp_path, "count", "--domain", "birds", "--op", "explode")
    assert bad.returncode == 1 and "unknown transform 'explode'" in bad.stderr


def test_a_fan_out_killed_mid_way_ends_with_exactly_one_output_per_image(env, clients, tmp_path):
    import signal
    import subprocess

    from tests.support import host_command, prepare_app_dir, wait_for

    app = prepare_app_dir(tmp_path)
    ingest(env, clients, app, {f"birds/v1/{d}/robin/{i:02d}.jpg": photo(i) for d in ("red", "blue") for i in range(20)})
    request(clients, "birds", {"tags": ["robin"]}, "grayscale", "1")
    paged = {**env, "CORPUS_TRANSFORM_PAGE_SIZE": "3"}
    proc = subprocess.Popen(host_command(app, "--lease", "3"), env=paged, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(transformed(clients, "birds")) >= 6, 120, "6 transformed images")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(transformed(clients, "birds")) < 40, "the host finished before it could be killed; the test proves nothing"
    run_host(paged, app, "--lease", "3")
    assert transformed(clients, "birds") == {
        f"transform/grayscale/1/{d}/robin/v1/{i:02d}.jpg" for d in ("red", "blue") for i in range(20)
    }
    proc = run_cli(env, tmp_path, "count", "--domain", "birds", "--tag", "robin", "--transform", "grayscale:1", "--json")
    assert json.loads(proc.stdout) == {"images": 40, "sets": 2, "sources": 40}
    for d in ("red", "blue"):
        entity = clients.table_client("ImageSets").get_entity(
            "birds", keys.set_row_key(SetRef("birds", (d, "robin"), "v1"), ("grayscale", "1"))
        )
        assert as_int(entity["ImageCount"]) == 20


def test_pages_resume_between_sets_when_the_scan_budget_runs_out(rt):
    """Page size 1 (4 rows read per page) over 10 sets of which 2 carry both tags: the cursor
    moves past sets that are read but not selected, and exactly the 2 selected images get jobs."""
    import dataclasses

    from corpus.app.transform_jobs import on_transform_message
    from corpus.store.rows import ImageRow

    rt.settings = dataclasses.replace(rt.settings, transform_page_size=1)
    for i in range(10):
        ref = SetRef("birds", ("all", f"s{i}"), "v1")
        rt.catalog.sets.ensure(ref, ["all", f"s{i}"] + (["x"] if i in (3, 8) else []), ref.original_prefix())
        rt.catalog.images.record(ref, ImageRow(f"{i}.jpg", ref.original_prefix() + f"{i}.jpg", 10, "0" * 32, "image/jpeg", 4, 3))
    requests = rt.clients.queue_client("transform-requests")
    requests.send_message(
        json.dumps({"domain": "birds", "source": {"tags": ["all", "x"]}, "transform": {"name": "grayscale", "version": "1"}})
    )
    pages = 0
    while True:
        batch = list(requests.receive_messages(max_messages=32))
        if not batch:
            break
        for m in batch:
            on_transform_message(rt, m.content, m.id)
            on_transform_message(rt, m.content, m.id)  # every page delivered twice
            requests.delete_message(m)
            pages += 1
    jobs = [json.loads(m.content) for m in rt.clients.queue_client("transform-jobs").receive_messages(max_messages=32)]
    assert sorted((j["dirs"][1], j["file"]) for j in jobs) == [("s3", "3.jpg"), ("s8", "8.jpg")]
    assert pages >= 3
