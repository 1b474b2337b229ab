"""End to end through ``corpus host`` on Azurite: facts, duplicate clusters, leak-free splits,
``--dedupe``, ``--where``, ``diff``, and a duplicate delivery that changes nothing (docs/dedupe.md)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContentSettings
from PIL import Image

from corpus.domain import manifest as mf
from corpus.domain.images import inspect
from corpus.domain.where import evaluate, parse, values_of
from tests.photolike import encode, picture, rotated_exif, variant
from tests.support import run_cli, run_host

pytestmark = pytest.mark.e2e

SIZE = (160, 120)


def jpg(seed: int) -> bytes:
    return encode(picture(seed, SIZE), "JPEG", 90)


def drop() -> tuple[dict[str, bytes], dict[str, int]]:
    """Staged name → bytes, and the blob each original picture's group is known by (→ seed)."""
    files: dict[str, bytes] = {}
    group: dict[str, int] = {}

    def add(name: str, data: bytes, seed: int) -> None:
        files[name] = data
        group[name] = seed

    for i in range(6):
        add(f"birds/v1/all/robin/r{i}.jpg", jpg(10 + i), 10 + i)
        add(f"birds/v1/all/jay/j{i}.jpg", jpg(20 + i), 20 + i)
    add("birds/v1/all/copies/r0.jpg", jpg(10), 10)  # exact copy
    add("birds/v1/all/reenc/r1.jpg", variant(jpg(11), "reencode", 5), 11)  # JPEG quality 50-90
    add("birds/v1/all/half/r2.jpg", variant(jpg(12), "half"), 12)
    add("birds/v1/all/png/r3.png", variant(jpg(13), "png"), 13)
    add("birds/v1/all/reenc/j0.jpg", variant(jpg(20), "reencode", 9), 20)
    add("birds/v1/all/turned/t.jpg", rotated_exif(40, (96, 64)), 40)
    # v2 of robin: r0, r1 unchanged, r2 changed, r3 removed, r4 renamed to r4b, r5 unchanged, r6 added
    for name, seed in (("r0", 10), ("r1", 11), ("r5", 15)):
        add(f"birds/v2/all/robin/{name}.jpg", jpg(seed), seed)
    add("birds/v2/all/robin/r2.jpg", jpg(30), 30)
    add("birds/v2/all/robin/r4b.jpg", jpg(14), 14)
    add("birds/v2/all/robin/r6.jpg", jpg(31), 31)
    return files, group


def original_blob(staged: str) -> str:
    _domain, version, *dirs, file = staged.split("/")
    return "/".join(["original", *dirs, version, file])


def stage(clients: Any, files: dict[str, bytes]) -> None:
    st = clients.container("staging")
    for name, data in files.items():
        st.upload_blob(name, data, overwrite=True, content_settings=ContentSettings(content_type="image/jpeg"))


def ok(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = run_cli(env, cwd, *args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def lines(env: dict[str, str], cwd: Path, *args: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in ok(env, cwd, *args, "--json").splitlines() if x.strip()]


def manifest(clients: Any, name: str) -> list[dict[str, Any]]:
    data = clients.container("trainsets").get_blob_client(mf.manifest_blob(name, "1")).download_blob().readall()
    return [json.loads(x) for x in gzip.decompress(data).decode().splitlines()]


def test_duplicates_splits_dedupe_where_diff(env, clients, app_dir, tmp_path, rt) -> None:
    files, group = drop()
    stage(clients, files)
    run_host(env, app_dir)
    seed_of = {original_blob(k): v for k, v in group.items()}
    by_seed: dict[int, set[str]] = {}
    for blob, seed in seed_of.items():
        by_seed.setdefault(seed, set()).add(blob)

    # -- clusters: every copy with its original, no two pictures together
    near = lines(env, tmp_path, "dupes", "--domain", "birds", "--near")
    clusters = [{m["blob"] for m in line["members"]} for line in near]
    assert sorted(map(sorted, clusters)) == sorted(sorted(b) for b in by_seed.values() if len(b) > 1)
    exact = lines(env, tmp_path, "dupes", "--domain", "birds")
    assert all(line["kind"] == "exact" and len({m["sha256"] for m in line["members"]}) == 1 for line in exact)
    assert {"original/all/robin/v1/r0.jpg", "original/all/copies/v1/r0.jpg", "original/all/robin/v2/r0.jpg"} in [
        {m["blob"] for m in line["members"]} for line in exact
    ]
    # paged through the CLI: pages of 2 clusters, the token last, every cluster once
    paged: list[dict[str, Any]] = []
    token: list[str] = []
    while True:
        page = lines(env, tmp_path, "dupes", "--domain", "birds", "--near", "--limit", "2", *token)
        more = [x["continuation"] for x in page if "continuation" in x]
        assert len(page) - len(more) <= 2 and more in ([], [page[-1].get("continuation")])
        paged += [x for x in page if "continuation" not in x]
        if not more:
            break
        token = ["--continuation", more[0]]
    assert paged == near and len(near) > 2
    only_v1 = lines(env, tmp_path, "dupes", "--domain", "birds", "--near", "--version", "v1", "--tag", "robin")
    assert all(m["blob"].startswith("original/all/robin/v1/") for line in only_v1 for m in line["members"])

    # -- leak-free splits: every member of a cluster in one split
    create = ["trainset", "create", "--version", "1", "--domain", "birds", "--tag", "all", "--set-version", "v1"]
    ok(env, tmp_path, *create, "--name", "split", "--split", "34/33/33")
    ok(env, tmp_path, *create, "--name", "dedup", "--dedupe", "exact")
    ok(env, tmp_path, *create, "--name", "sharp", "--where", "width>=150 and not grey")
    run_host(env, app_dir)
    split = manifest(clients, "split")
    assert len(split) == sum(1 for b in seed_of if "/v1/" in b)
    splits_of: dict[int, set[str]] = {}
    for rec in split:
        splits_of.setdefault(seed_of[rec["blob"]], set()).add(rec["split"])
        assert rec["sha256"] == inspect(files[next(k for k in files if original_blob(k) == rec["blob"])]).facts.sha256  # type: ignore[union-attr]
    assert all(len(s) == 1 for s in splits_of.values()), splits_of
    assert len({s for ss in splits_of.values() for s in ss}) > 1  # the split itself still splits
    turned = next(r for r in split if r["blob"].endswith("/t.jpg"))
    assert (turned["width"], turned["height"]) == (96, 64)  # upright, as displayed
    show = json.loads(ok(env, tmp_path, "trainset", "show", "split:1", "--json"))
    assert show["moved"] >= 0 and show["images"] == len(split)
    assert lines(env, tmp_path, "dupes", "--trainset", "split:1") == []

    # -- --dedupe exact: one per exact content, the others skipped as duplicates
    dedup = manifest(clients, "dedup")
    assert len({r["sha256"] for r in dedup}) == len(dedup) == len(split) - 1  # copies/r0 is r0
    shown = json.loads(ok(env, tmp_path, "trainset", "show", "dedup:1", "--json"))
    assert shown["skipped"] == {"duplicate": 1} and "duplicate: birds/original/all/" in shown["skipped_examples"][0]

    # -- --where: the counts equal a brute-force evaluation of the same facts
    expr = "width>=150 and not grey"
    truth = [
        k
        for k, data in files.items()
        if (info := inspect(data)) and evaluate(parse(expr), values_of(len(data), info.width, info.height, info.facts))
    ]
    counted = json.loads(ok(env, tmp_path, "count", "--domain", "birds", "--where", expr, "--json"))
    assert counted["images"] == len(truth)
    v1_truth = [k for k in truth if k.startswith("birds/v1/")]
    assert len(manifest(clients, "sharp")) == len(v1_truth)
    tagged = json.loads(ok(env, tmp_path, "count", "--domain", "birds", "--tag", "jay", "--where", "sharpness>=0", "--json"))
    assert tagged == {"images": 6, "sets": 1}
    narrow = json.loads(ok(env, tmp_path, "sets", "--domain", "birds", "--where", "width<100", "--json"))
    assert sorted(r["path"] for r in narrow) == ["all/half", "all/turned"]  # 80 px wide, and 96 px upright
    bad = run_cli(env, tmp_path, "count", "--domain", "birds", "--where", "sharpnes>=1")

    assert bad.returncode != 0 and "unknown field 'sharpnes'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

    # -- diff v1 → v2 of robin, exactly
    got = json.loads(
        ok(env, tmp_path, "diff", "--domain", "birds", "--path", "all/robin", "--from", "v1", "--to", "v2", "--json")
    )
    assert got == {"added": 1, "removed": 1, "changed": 1, "unchanged": 3, "moved": 1}

    # -- the API and the gallery's image page list an image's duplicates (linked) and its facts
    from corpus.app import gallery, web

    def get(path: str, handler: Any, route: dict[str, str] | None = None) -> web.Response:
        return web.handle(rt, web.Request.of("GET", path, route or {}, {}), handler)

    r0 = "original/all/robin/v1/r0.jpg"
    api = json.loads(get(f"/api/dupes?blob=birds/{r0}", web.api_dupes).body)
    assert {(d["blob"], d["kind"]) for d in api["duplicates"]} == {
        ("original/all/copies/v1/r0.jpg", "exact"),
        ("original/all/robin/v2/r0.jpg", "exact"),
    }
    assert api["facts"]["sha256"] == inspect(files["birds/v1/all/robin/r0.jpg"]).facts.sha256  # type: ignore[union-attr]
    assert [
        d["kind"] for d in json.loads(get("/api/dupes?blob=birds/original/all/half/v1/r2.jpg", web.api_dupes).body)["duplicates"]
    ] == ["near"]
    assert get("/api/dupes?blob=birds/original/all/robin/v1/nope.jpg", web.api_dupes).status == 404
    page = get(f"/gallery/birds/image?blob={r0}", gallery.image_page, {"domain": "birds"})
    html_text = page.body.decode() if isinstance(page.body, bytes) else str(page.body)
    assert page.status == 200 and 'id="duplicates"' in html_text and "original/all/copies/v1/r0.jpg" in html_text
    assert 'id="facts"' in html_text and "sharpness" in html_text

    # -- a duplicate delivery (the same uploads again) changes nothing
    dupes_rows = sorted((e["PartitionKey"], e["RowKey"]) for e in clients.table_client("Duplicates").list_entities())
    again = {k: files[k] for k in ("birds/v1/all/robin/r1.jpg", "birds/v1/all/reenc/r1.jpg", "birds/v1/all/copies/r0.jpg")}
    stage(clients, again)
    run_host(env, app_dir)
    assert sorted((e["PartitionKey"], e["RowKey"]) for e in clients.table_client("Duplicates").list_entities()) == dupes_rows
    assert lines(env, tmp_path, "dupes", "--domain", "birds", "--near") == near


def test_png_variant_is_a_png(tmp_path) -> None:
    """The drop's PNG conversion really is one (so the e2e test covers another format)."""
    assert Image.open(io.BytesIO(variant(jpg(13), "png"))).format == "PNG"


def test_a_host_killed_mid_ingest_leaves_the_same_clusters(env, clients, app_dir, tmp_path) -> None:
    """SIGKILL the host once some originals are indexed; the restarted host ends with every copy in
    its original's cluster, exactly as an uninterrupted run (the first test) does."""
    import signal
    import subprocess

    from tests.support import host_command, wait_for

    files: dict[str, bytes] = {}
    for i in range(8):
        files[f"birds/v1/k/o{i}.jpg"] = jpg(60 + i)
        files[f"birds/v1/kre/o{i}.jpg"] = variant(jpg(60 + i), "reencode", i)
        files[f"birds/v1/kcp/o{i}.jpg"] = jpg(60 + i)
    stage(clients, files)
    dupes = clients.table_client("Duplicates")
    proc = subprocess.Popen(host_command(app_dir, "--lease", "2"), env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: sum(1 for _ in dupes.query_entities("RowKey ge 'c!' and RowKey lt 'c\"'")) >= 3, 120, "3 contents indexed"
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(list(clients.container("staging").list_blobs())) > 0, "ingest finished before the kill; the test proves nothing"
    run_host(env, app_dir, "--lease", "2")  # a killed worker's messages come back within the index's wait
    near = lines(env, tmp_path, "dupes", "--domain", "birds", "--near")
    got = sorted(sorted(m["blob"] for m in line["members"]) for line in near)
    want = sorted(sorted(f"original/{d}/v1/o{i}.jpg" for d in ("k", "kre", "kcp")) for i in range(8))
    assert got == want
