"""The benches' external-account mode (bench/account.py): per-run names valid for Azure, redaction
of keys and SAS, the option, and one bench run end to end against an Azurite standing in for an
external account (everything it made is gone afterwards; the key is never printed)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest

from bench.account import (
    OPTION,
    PREFIX_PATTERN,
    Names,
    Storage,
    _Redacting,
    add_storage_option,
    connection_string_from,
    corpus_settings,
    keep_secret,
    redact,
    run_prefix,
)
from corpus.store.settings import DEFAULTS, TABLES, Settings, poison_queue
from corpus.store.storage import Clients
from tests.support import REPO, Azurite

CONTAINER_OR_QUEUE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
KEY = base64.b64encode(bytes(range(64))).decode()
CONN = f"DefaultEndpointsProtocol=https;AccountName=benchacct;AccountKey={KEY};EndpointSuffix=core.windows.net"


def test_run_prefix_is_valid_for_every_service_and_unique() -> None:
    assert run_prefix(datetime(2026, 12, 5, 18, 21, 9, tzinfo=UTC), "a3f4") == "bn1205182109a3f4"
    prefixes = {run_prefix() for _ in range(50)}
    assert len(prefixes) > 40  # 16 random bits per second: collisions are rare, not impossible
    for p in prefixes:
        assert PREFIX_PATTERN.match(p) and CONTAINER_OR_QUEUE.match(p) and TABLE.match(p)
    with pytest.raises(ValueError):
        run_prefix(token="XYZ!")


def test_without_a_prefix_every_name_is_the_one_benches_always_used() -> None:
    names = Names()
    assert (names.container("staging"), names.queue("copy-requests"), names.table("ImageSets")) == (
        "staging",
        "copy-requests",
        "ImageSets",
    )
    assert names.domain("bench") == "bench"
    assert not names.owns("staging") and not names.owns("")
    assert corpus_settings(names) == {}


def test_prefixed_names_are_valid_azure_names_and_owned() -> None:
    names = Names(run_prefix())
    settings = corpus_settings(names)
    made = [*settings.values(), names.container("rawcopy2"), names.domain("bench")]
    made += [poison_queue(poison_queue(settings[k])) for k in settings if k.endswith("_QUEUE")]  # the longest
    for name in made:
        assert CONTAINER_OR_QUEUE.match(name), name
        assert names.owns(name)
    assert TABLE.match(names.table("ImageSets")) and names.owns(names.table("ImageSets"))
    assert not names.owns("staging") and not names.owns("bn0000000000ffff-staging")
    with pytest.raises(ValueError):
        names.container("Upper")  # containers and queues are lowercase
    with pytest.raises(ValueError):
        names.table("with-hyphen")  # tables are alphanumeric
    with pytest.raises(ValueError):
        names.queue("x" * 50)  # over 63 characters


def test_corpus_settings_move_every_container_and_queue_corpus_makes_under_the_prefix() -> None:
    names = Names(run_prefix())
    s = Settings.from_env({"CorpusStorage": CONN, **corpus_settings(names)})
    assert all(names.owns(c) for c in s.reserved_containers), s.reserved_containers
    assert all(names.owns(q) for q in s.queues), s.queues
    assert set(corpus_settings(names)) <= set(DEFAULTS)
    assert all(TABLE.match(t) for t in TABLES)  # the fixed ones a bench claims instead


def test_redact_masks_keys_and_sas_signatures() -> None:
    sas_url = "https://benchacct.blob.core.windows.net/c?sv=2025-11-05&sr=c&sp=rl&sig=abc%2Fdef%3D&se=2026"
    text = f"conn {CONN}\nurl {sas_url}\nencoded sig%3Dxyz123&x\nshared SharedAccessSignature=sv=1&sig=zz;"
    out = redact(text)
    assert KEY not in out and "abc%2Fdef" not in out and "xyz123" not in out and "sig=zz" not in out
    assert "AccountKey=REDACTED" in out and "sig=REDACTED" in out and "sv=2025-11-05" in out
    secret = "s3cr3t/value+with=signs"
    keep_secret(secret)
    assert redact(f"a {secret} b {secret.replace('/', '%2F').replace('+', '%2B').replace('=', '%3D')}") == "a REDACTED b REDACTED"
    assert redact("nothing secret: sigma=1 design=2") == "nothing secret: sigma=1 design=2"


def test_redacting_stream_masks_what_is_written() -> None:
    inner = io.StringIO()
    stream = _Redacting(inner)  # type: ignore[arg-type]
    print(f"failed: {CONN}", file=stream)
    assert KEY not in inner.getvalue() and "AccountKey=REDACTED" in inner.getvalue()
    assert _Redacting(io.TextIOWrapper(io.BytesIO(), encoding="utf-8")).encoding == "utf-8"  # what libraries ask of stderr


def test_option_reads_the_connection_string_from_the_named_variable() -> None:
    ap = argparse.ArgumentParser()
    add_storage_option(ap)
    assert ap.parse_args([]).storage_connection_string_env is None
    assert ap.parse_args([OPTION, "BENCH_STORAGE"]).storage_connection_string_env == "BENCH_STORAGE"
    assert connection_string_from("BENCH_STORAGE", {"BENCH_STORAGE": CONN}) == CONN
    for env, why in (
        ({}, "unset or empty"),
        ({"BENCH_STORAGE": "AccountName=a;SharedAccessSignature=sv=1&sig=x"}, "no AccountKey"),
        ({"BENCH_STORAGE": "UseDevelopmentStorage=true;AccountKey=abcdefgh"}, "UseDevelopmentStorage"),
    ):
        with pytest.raises(SystemExit, match=why) as err:
            connection_string_from("BENCH_STORAGE", env)
        assert "sig=x" not in str(err.value)


def test_an_external_account_is_reported_by_its_host_and_signs_the_peers_sas() -> None:
    names = Names(run_prefix())
    storage = Storage(CONN, names, external=True)
    assert storage.blob_url == "https://benchacct.blob.core.windows.net"
    assert storage.server == {
        "kind": "external storage account",
        "account": "benchacct",
        "blob_endpoint": "benchacct.blob.core.windows.net",
        "prefix": names.prefix,
    }
    assert KEY not in json.dumps(storage.server)
    sas = storage.container_sas(names.container("staging"), "rl")
    assert "sig=" in sas and "sv=2025-11-05" in sas
    sig = parse_qs(sas)["sig"][0]
    shown = redact(f"{storage.blob_url}/x?{sas}")
    assert sig not in shown and quote(sig, safe="") not in shown and shown.startswith(storage.blob_url)
    assert storage.env()["CORPUS_STAGING_CONTAINER"] == names.container("staging")


def run_bench(azurite: Azurite, cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``bench/<script>`` with the option naming a variable that holds ``azurite``'s connection string."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
    env = {**base, "BENCH_STORAGE": azurite.connection_string, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(REPO / "bench" / script), *args, OPTION, "BENCH_STORAGE"]
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert azurite.key not in proc.stdout + proc.stderr
    return proc


def account_contents(clients: Clients) -> dict[str, list[str]]:
    return {
        "containers": [c.name for c in clients.blob.list_containers()],
        "queues": [q.name for q in clients.queue.list_queues()],
        "tables": [t.name for t in clients.table.list_tables()],
    }


def cleanup_report(stderr: str) -> dict[str, Any]:
    reports = [json.loads(line)["storage_cleanup"] for line in stderr.splitlines() if line.startswith('{"storage_cleanup"')]
    assert len(reports) >= 1, stderr[-2000:]
    return dict(reports[0])


@pytest.fixture
def account(azurite: Azurite) -> Clients:
    """Azurite standing in for an external account, holding someone else's container and table."""
    clients = Clients(Settings.from_env({"CorpusStorage": azurite.connection_string}).connection)
    clients.ensure(containers=("keepme",), tables=("KeepMe",))
    return clients


SOMEONE_ELSES = {"containers": ["keepme"], "queues": [], "tables": ["KeepMe"]}


@pytest.mark.e2e
def test_ingest_bench_runs_against_an_external_account_and_leaves_nothing(
    azurite: Azurite, account: Clients, tmp_path: Path
) -> None:
    proc = run_bench(azurite, tmp_path, "ingest_bench.py", "--images", "12", "--count-requests")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    prefix = result["storage"]["prefix"]
    assert result["storage"]["kind"] == "external storage account" and PREFIX_PATTERN.match(prefix)
    assert result["images"] == 12 and result["raw_copy_images_per_s"] > 0 and result["pipeline_images_per_s"] > 0
    assert set(result["host_requests_per_image"]) >= {"blob PUT", "queue GET", "table POST"}  # counted by service
    cleanup = cleanup_report(proc.stderr)
    assert cleanup["prefix"] == prefix and cleanup["deleted"]["tables"] == len(TABLES) + 1  # + the host's receipts
    assert cleanup["deleted"]["containers"] >= 4 and cleanup["deleted"]["queues"] >= 5
    assert account_contents(account) == SOMEONE_ELSES


@pytest.mark.e2e
def test_upload_bench_gives_corpus_and_rclone_the_account(azurite: Azurite, account: Clients, tmp_path: Path) -> None:
    tools = "corpus,rclone" if shutil.which("rclone") else "corpus"
    print(f"upload bench peers: {tools}")  # rclone is a Debian package (./dev setup); without it, corpus alone
    proc = run_bench(azurite, tmp_path, "upload_bench.py", "--images", "10", "--small", "0", "--memory-files", "0",
                     "--reruns", "1", "--tools", tools)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["storage"]["kind"] == "external storage account"
    for tool in tools.split(","):
        assert result["2000 x 80 KB"][tool]["first_files_per_s"] > 0  # the bench counted 10 blobs under each prefix
    assert cleanup_report(proc.stderr)["deleted"] == {"containers": 1, "queues": 0, "tables": 0}
    assert account_contents(account) == SOMEONE_ELSES


@pytest.mark.e2e
def test_dataout_bench_pulls_from_the_account_and_claims_its_trainsets_table(
    azurite: Azurite, account: Clients, tmp_path: Path
) -> None:
    proc = run_bench(azurite, tmp_path, "dataout_bench.py", "--images", "10", "--reruns", "1", "--tools", "corpus",
                     "--skip-dataloader")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["storage"]["kind"] == "external storage account" and result["pull"]["corpus"]["first_s"] > 0
    assert cleanup_report(proc.stderr)["deleted"] == {"containers": 3, "queues": 0, "tables": 1}
    assert account_contents(account) == SOMEONE_ELSES


@pytest.mark.e2e
def test_a_bench_refuses_an_account_that_already_has_corpus_tables(azurite: Azurite, tmp_path: Path) -> None:
    """corpus's table names are fixed: a bench never writes into (or deletes) tables it did not create."""
    clients = Clients(Settings.from_env({"CorpusStorage": azurite.connection_string}).connection)
    clients.ensure(tables=("Images",))
    proc = run_bench(azurite, tmp_path, "ingest_bench.py", "--images", "3")
    assert proc.returncode == 1 and "already has table Images" in proc.stderr, proc.stderr[-2000:]
    assert account_contents(clients) == {"containers": [], "queues": [], "tables": ["Images"]}
