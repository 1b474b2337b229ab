"""End to end: the tag index beside the sets, ``corpus sets --tag``/``count``/``reindex``, through ``corpus host``."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from azure.storage.blob import ContentSettings

from corpus.domain import keys
from corpus.store.rows import parse_tags
from tests.support import host_command, jpeg, prepare_app_dir, run_cli, run_host, wait_for

pytestmark = pytest.mark.e2e


def upload(clients, files: dict[str, bytes]) -> None:
    st = clients.container("staging")
    for name, data in files.items():
        st.upload_blob(name, data, content_settings=ContentSettings(content_type="image/jpeg"))


def index_and_scan(clients, domain: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(tag, set row key) pairs from the index rows, and the same pairs computed from every set row."""
    table = clients.table_client("ImageSets")
    index, scan = set(), set()
    for e in table.query_entities("PartitionKey eq @d", parameters={"d": domain}):
        if e["RowKey"].startswith(keys.INDEX_PREFIX):
            assert e["RowKey"] == keys.tag_index_row_key(e["Tag"], e["SetRowKey"])
            index.add((e["Tag"], e["SetRowKey"]))
        else:
            scan |= {(tag, e["RowKey"]) for tag in parse_tags(e["Tags"])}
    return index, scan


def cli_json(env, cwd, *args):
    proc = run_cli(env, cwd, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_index_equals_a_full_scan_with_every_event_delivered_twice(env, clients, app_dir, tmp_path):
    files = {
        f"birds/v1/{c}/{b}/{i}.jpg": jpeg(i) for i, (c, b) in enumerate([("red", "robin"), ("blue", "jay"), ("red", "jay")] * 3)
    }
    files |= {"birds/v1/Red/Angry/robin/x.jpg": jpeg(50), "birds/v1/root.jpg": jpeg(51)}
    upload(clients, files)
    run_host(env, app_dir, "--deliver-twice")
    index, scan = index_and_scan(clients, "birds")
    assert index == scan and len(index) == 9  # red/robin, blue/jay, red/jay (2 each), red/angry/robin (3), root (0)

    # A set gaining images keeps one index entry per tag.
    upload(clients, {"birds/v1/red/robin/late.jpg": jpeg(60), "birds/v1/red/robin/later.jpg": jpeg(61)})
    run_host(env, app_dir, "--deliver-twice")
    assert index_and_scan(clients, "birds") == (index, scan)

    rows = cli_json(env, tmp_path, "sets", "--domain", "birds", "--tag", "RED", "--tag", "robin")
    assert sorted((r["path"], r["images"]) for r in rows) == [("Red/Angry/robin", 1), ("red/robin", 5)]
    assert cli_json(env, tmp_path, "sets", "--tag", "jay") == cli_json(env, tmp_path, "sets", "--domain", "birds", "--tag", "jay")
    assert cli_json(env, tmp_path, "count", "--domain", "birds", "--tag", "red") == {"images": 9, "sets": 3}
    assert cli_json(env, tmp_path, "count", "--domain", "birds") == {"images": 13, "sets": 5}


def test_sets_pages_with_a_continuation_token(env, clients, app_dir, tmp_path):
    upload(clients, {f"birds/v1/flock/s{i:02d}/a.jpg": jpeg(i) for i in range(7)})
    run_host(env, app_dir)
    seen, token = [], None
    for _ in range(10):
        args = ["sets", "--domain", "birds", "--tag", "flock", "--limit", "3"] + (["--continuation", token] if token else [])
        page = cli_json(env, tmp_path, *args)
        seen += [r["path"] for r in page["sets"]]
        token = page["continuation"]
        if token is None:
            break
    assert seen == [f"flock/s{i:02d}" for i in range(7)]
    text = run_cli(env, tmp_path, "sets", "--domain", "birds", "--limit", "2")
    assert "--continuation" in text.stdout and text.stdout.count("flock/") == 2
    bad = run_cli(env, tmp_path, "sets", "--domain", "No Such Domain!")
    assert bad.returncode == 1 and "invalid domain" in bad.stderr
    bad = run_cli(env, tmp_path, "sets", "--domain", "birds", "--continuation", "garbage")
    assert bad.returncode == 1 and "not a token" in bad.stderr


def test_index_is_consistent_at_a_sigkill_and_after_the_restart(env, clients, tmp_path):
    app = prepare_app_dir(tmp_path)
    upload(clients, {f"kill/v1/g{i % 4}/s{i:03d}/{j}.jpg": jpeg(i * 10 + j, size=(16, 12)) for i in range(60) for j in range(1)})
    proc = subprocess.Popen(host_command(app, "--lease", "3"), env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    table = clients.table_client("ImageSets")
    try:
        wait_for(lambda: sum(1 for _ in table.query_entities("PartitionKey eq 'kill' and RowKey lt 'x!'")) >= 12, 120, "12 sets")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    index, scan = index_and_scan(clients, "kill")
    assert index == scan and len(scan) < 120, "the host finished before it could be killed; the test proves nothing"
    run_host(env, app, "--lease", "3")
    index, scan = index_and_scan(clients, "kill")
    assert index == scan and len(scan) == 120
    assert cli_json(env, tmp_path, "count", "--domain", "kill", "--tag", "g1") == {"images": 15, "sets": 15}


def test_reindex_backfills_sets_created_before_the_index_idempotently(env, clients, app_dir, tmp_path):
    upload(clients, {f"birds/v1/{c}/robin/{i}.jpg": jpeg(i) for i, c in enumerate(["red", "blue", "green"])})
    run_host(env, app_dir)
    table = clients.table_client("ImageSets")
    before = index_and_scan(clients, "birds")
    for e in list(table.query_entities("PartitionKey eq 'birds' and RowKey ge 'x!'")):
        table.delete_entity(e["PartitionKey"], e["RowKey"])  # as a corpus written before the index existed
    unindexed = run_cli(env, tmp_path, "sets", "--domain", "birds", "--tag", "robin")  # not a silent empty answer
    assert unindexed.returncode == 1 and "run `corpus reindex --domain birds` once" in unindexed.stderr
    assert cli_json(env, tmp_path, "reindex") == {"sets": 3, "index_rows": 6}
    assert cli_json(env, tmp_path, "reindex", "--domain", "birds") == {"sets": 3, "index_rows": 6}
    assert index_and_scan(clients, "birds") == before
    assert len(cli_json(env, tmp_path, "sets", "--domain", "birds", "--tag", "robin")) == 3


def test_a_path_with_too_many_tags_is_rejected_with_the_reason(env, clients, app_dir, tmp_path):
    deep = "/".join(f"d{i}" for i in range(70))
    upload(clients, {f"birds/v1/{deep}/a.jpg": jpeg(1), "birds/v1/ok/b.jpg": jpeg(2)})
    run_host(env, app_dir)
    report = json.loads(run_cli(env, tmp_path, "status", "--json").stdout)
    (rej,) = report["rejected"]["latest"]
    assert "70 tags" in rej["Reason"] and "at most 64" in rej["Reason"]
    assert [r["path"] for r in cli_json(env, tmp_path, "sets", "--domain", "birds")] == ["ok"]


def test_reindex_resumes_from_its_token_and_skips_index_rows(rt):
    from corpus.app.queries import reindex
    from corpus.domain.paths import SetRef

    for i in range(7):
        rt.catalog.sets.ensure(SetRef("birds", ("all", f"s{i}"), "v1"), ["all", f"s{i}"], f"original/all/s{i}/v1/")
    table = rt.catalog.sets.table
    before = {e["RowKey"] for e in table.list_entities()}
    for e in list(table.query_entities("RowKey ge 'x!'")):
        table.delete_entity(e["PartitionKey"], e["RowKey"])
    first = next(reindex(rt.catalog, page=3))  # interrupted after its first page
    assert (first.sets, first.rows) == (3, 6) and first.continuation
    *_, last = reindex(rt.catalog, continuation=first.continuation, page=3)
    assert (last.sets, last.rows, last.continuation) == (4, 8, None)
    assert {e["RowKey"] for e in table.list_entities()} == before
    assert [r.path for r in rt.catalog.sets.query("birds", ("s3", "ALL"))] == ["all/s3"]


def test_several_tags_cost_requests_by_the_most_selective_one(rt):
    from corpus.domain.paths import SetRef
    from tests.support import requests_seen

    for i in range(300):
        tags = ["all"] + (["rare"] if i % 100 == 7 else [])
        rt.catalog.sets.ensure(SetRef("birds", ("all", f"s{i:03d}"), "v1"), tags, "x/")
    with requests_seen() as seen:
        rows = list(rt.catalog.sets.query("birds", ("all", "rare"), originals_only=True))
    assert [r.path for r in rows] == ["all/s007", "all/s107", "all/s207"]
    # 16 rows of 'all', all 3 of 'rare' (ended), then the 3 sets by point reads (an 'or' of RowKeys
    # is a partition scan for the Table service, issue 25 R4)
    assert len(seen) == 2 + 3 and all("(PartitionKey=" in u for u in seen[2:])
