"""Pure rules from the hardening issues (13, 16): names, URLs, redaction, escaping, messages."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain.display import printable, redact
from corpus.domain.errors import InvalidNameError
from corpus.domain.paths import WORST_ACCOUNT_BLOB_URL, check_copy_source, parse_staged_name, worst_derived_name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("d0m/v1/a./x.jpg", "ends in '.'"),
        ("d0m/v1/a/x.jpg.", "ends in '.'"),
        ("d0m/v1./a/x.jpg", "ends in '.'"),
        ("d0m/v1/a\nFORGED/x.jpg", "control character U+000A"),
        ("d0m/v1/a/x\x00.jpg", "control character U+0000"),
        ("d0m/v1/a/x\u2028.jpg", "control character U+2028"),
        ("d0m/v1/a/\udcff.jpg", "control character U+DCFF"),
        ("d0m/v1/" + "d/" * 252 + "x.jpg", "path segments"),
        ("d0m/v1/" + "a" * 900 + "/x.jpg", "too long"),
    ],
)
def test_names_azure_would_refuse_or_mangle_are_rejected(name: str, why: str) -> None:
    with pytest.raises(InvalidNameError, match=why.replace(".", r"\.").replace("+", r"\+")):
        parse_staged_name(name)


def test_the_worst_derived_name_fits_at_the_limit() -> None:
    staged = parse_staged_name("d0m/v1/" + "a" * 700 + "/x.jpg")
    assert len(worst_derived_name(staged)) <= 1024
    # Over by one character: the transformed name would not fit, though the original would.
    room = 1024 - len(worst_derived_name(staged))
    with pytest.raises(InvalidNameError, match="transformed name"):
        parse_staged_name("d0m/v1/" + "a" * (700 + room + 1) + "/x.jpg")


def test_corpus_names_are_nfc() -> None:
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    a = parse_staged_name(f"d0m/v1/{nfd}/{nfd}.jpg")
    b = parse_staged_name(f"d0m/v1/{nfc}/{nfc}.jpg")
    assert a.name != b.name and (a.set, a.file, a.original_blob) == (b.set, b.file, b.original_blob)


def test_copy_source_url_limit_counts_percent_encoding() -> None:
    base = WORST_ACCOUNT_BLOB_URL + "staging"
    check_copy_source(base, "d0m/v1/" + "鳥" * 200 + ".jpg")  # 200 characters of 9 encoded bytes each: fits
    with pytest.raises(InvalidNameError, match="percent-encoded URL"):
        check_copy_source(base, "d0m/v1/" + "鳥" * 225 + ".jpg")  # short in characters, 2 KiB encoded
    with pytest.raises(InvalidNameError, match="percent-encoded URL"):
        check_copy_source(base, "d0m/v1/" + "é" * 340 + ".jpg")


def test_redact_removes_sas_signatures_and_account_keys() -> None:
    text = "GET https://a.blob.core.windows.net/s/x?sv=2022&sig=Ab%2Fc%3D&se=1 failed; AccountKey=Zm9v==;Endpoint"
    out = redact(text)
    assert "Ab%2Fc" not in out and "Zm9v" not in out
    assert "sig=REDACTED&se=1" in out and "AccountKey=REDACTED;" in out


@given(st.text())
def test_printable_never_emits_a_line_break_or_control_character(text: str) -> None:
    out = printable(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in out)
    if text.isprintable():
        assert out == text


SAS_CONNECTION = (
    "BlobEndpoint=http://127.0.0.1:9/acct;QueueEndpoint=http://127.0.0.1:9/acct;TableEndpoint=http://127.0.0.1:9/acct;"
    "SharedAccessSignature=sv=2022-11-02&ss=bqt&srt=sco&sp=rwdlacup&se=2030-01-01T00:00:00Z&sig=SECRETSIG%2Fabc%3D"
)


@pytest.mark.parametrize("transport", ["lean", "requests"])
def test_sas_signatures_are_never_printed(tmp_path, transport: str) -> None:
    """A CLI error with a SAS connection to a dead endpoint; ``upload --json`` and the failures file.
    requests' errors quote the URL (redacted here); corpus's own transport names only host and port."""
    import json
    import os

    from corpus.upload.report import Failure, Summary, write_failures
    from tests.support import run_cli

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage"))}
    env.update(CorpusStorage=SAS_CONNECTION, CORPUS_CACHE_DIR=str(tmp_path / "cache"), CORPUS_HTTP=transport)
    status = run_cli(env, tmp_path, "status")
    assert status.returncode == 1 and "cannot reach storage" in status.stderr
    assert ("sig=REDACTED" in status.stderr) == (transport == "requests")
    assert "SECRETSIG" not in status.stdout + status.stderr

    # What a dead endpoint makes `corpus upload` report (measured: 35 s of retries, so built here).
    reason = "cannot reach storage (<urllib3 ...> GET http://127.0.0.1:9/acct/staging?restype=container&sig=SECRETSIG%2Fabc%3D)"
    summary = Summary("abc", "v1", "src", failures=[Failure("src/a/x.jpg", "abc/v1/a/x.jpg", reason)])
    write_failures(tmp_path / "f.json", summary)
    for text in (json.dumps(summary.as_json()), (tmp_path / "f.json").read_text()):
        assert "SECRETSIG" not in text and "sig=REDACTED" in text


def test_decodes_hold_the_memory_budget_their_headers_declare() -> None:
    import io
    import threading

    from PIL import Image

    from corpus.app.admission import MemoryBudget
    from corpus.domain.images import inspect

    buf = io.BytesIO()
    Image.new("RGB", (1500, 1000), (1, 2, 3)).save(buf, "PNG")
    data = buf.getvalue()  # a few KB declaring 1.5 MP: 6 MB decoded
    budget = MemoryBudget(10_000_000)  # room for one decode at a time
    declared: list[int] = []

    def admit(n: int):  # type: ignore[no-untyped-def]
        declared.append(n)
        return budget.hold(n)

    threads = [threading.Thread(target=inspect, args=(data,), kwargs={"admit": admit}) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert declared == [1500 * 1000 * 4] * 6
    assert budget.peak == 6_000_000  # never two at once
    with budget.hold(50_000_000):  # larger than the whole budget: admitted alone
        assert budget.peak == 10_000_000


DEAD = (
    "DefaultEndpointsProtocol=http;AccountName=x;AccountKey=eA==;BlobEndpoint=http://127.0.0.1:9/x;"
    "QueueEndpoint=http://127.0.0.1:9/x;TableEndpoint=http://127.0.0.1:9/x;"
)


def _cli_env(tmp_path, connection: str = DEAD) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
    return {**env, "CorpusStorage": connection, "AzureWebJobsStorage": connection, "CORPUS_CACHE_DIR": str(tmp_path / "c")}


def _one_line_error(proc, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("corpus: error:") and proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr


def test_cli_mistakes_are_one_line_errors(tmp_path) -> None:
    import json

    from tests.support import run_cli

    env = _cli_env(tmp_path)
    (tmp_path / "src").mkdir()
    bad_retry = tmp_path / "retry.json"
    bad_retry.write_text(json.dumps({"source": str(tmp_path / "src"), "domain": "abc", "version": "v1", "failures": [1]}))
    _one_line_error(run_cli(env, tmp_path, "upload", "--retry-from", str(bad_retry)), "every failure needs a 'path'")
    bad_retry.write_bytes(b"\xff\xfe garbage")
    _one_line_error(run_cli(env, tmp_path, "upload", "--retry-from", str(bad_retry)), "not UTF-8")
    _one_line_error(run_cli(env, tmp_path, "host", "--app-dir", str(tmp_path / "nowhere")), "no function_app.py")
    _one_line_error(run_cli(_cli_env(tmp_path, "this is not a connection string"), tmp_path, "status"), "configuration")
    _one_line_error(run_cli(env, tmp_path, "sample", "--domain", "BAD"), "invalid domain")
    _one_line_error(run_cli(env, tmp_path, "sets", "--domain", "No Such Domain!"), "invalid domain")


def test_host_with_storage_down_honours_its_timeout(tmp_path) -> None:
    import socket
    import subprocess
    import time

    from tests.support import host_command, prepare_app_dir

    app = prepare_app_dir(tmp_path)
    # A service that accepts connections and never answers: the SDK waits and retries for minutes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        conn = DEAD.replace("127.0.0.1:9", f"127.0.0.1:{port}")
        started = time.monotonic()
        proc = subprocess.run(
            host_command(app, "--until-idle", "--timeout", "3"),
            env=_cli_env(tmp_path, conn),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
    assert proc.returncode == 1 and "--timeout 3s" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 3 + 15  # start-up and grace, not the SDK's minutes of retries


def test_a_corrupt_md5_cache_is_set_aside_and_rebuilt(tmp_path) -> None:
    from corpus.transfer.hashcache import HashCache

    path = tmp_path / "upload-md5.sqlite"
    path.write_bytes(b"this is not an sqlite database" * 100)
    cache = HashCache(path)
    cache.put("/a/b.jpg", 1, 2, "0" * 32)
    cache.flush()
    assert cache.get("/a/b.jpg", 1, 2) == "0" * 32
    cache.close()
    assert (tmp_path / "upload-md5.sqlite.corrupt").read_bytes().startswith(b"this is not")


def test_debounced_refreshes_still_cover_every_returned_record() -> None:
    """Fewer refreshes than commits, and no invocation returns before a refresh that began after its commit."""
    import threading
    import time

    from corpus.domain.paths import SetRef
    from corpus.store.groupcommit import ImageRecorder
    from corpus.store.rows import ImageRow

    class Slow:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.committed_at: dict[str, float] = {}
            self.refreshes: list[tuple[float, float]] = []

        def record_images(self, ref, records, transform=None):  # type: ignore[no-untyped-def]
            time.sleep(0.01)
            with self.lock:
                for r in records:
                    self.committed_at[r.file] = time.monotonic()
            return [True] * len(records)

        def refresh_counts(self, ref, transform=None):  # type: ignore[no-untyped-def]
            started = time.monotonic()
            time.sleep(0.03)  # three round trips (shard sum, set row, update) to the commit's one
            with self.lock:
                self.refreshes.append((started, time.monotonic()))
            return (0, 0)

    fake = Slow()
    recorder = ImageRecorder(fake, max_batch=4)
    ref = SetRef("d0m", (), "v1")
    returned: dict[str, float] = {}

    def one(i: int) -> None:
        recorder.record(ref, ImageRow(f"{i}.jpg", f"original/v1/{i}.jpg", 1, "0" * 32, "image/jpeg", 1, 1))
        returned[f"{i}.jpg"] = time.monotonic()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(returned) == 40 and recorder.commits >= 10
    assert recorder.refreshes == len(fake.refreshes) < recorder.commits
    for name, done in returned.items():
        assert any(fake.committed_at[name] <= start and end <= done for start, end in fake.refreshes), name


def test_function_clients_retry_busy_storage_with_explicit_back_off(tmp_path) -> None:
    """503 ServerBusy is retried by both SDK policies with the back-off configured in FUNCTION_RETRY."""
    from azure.core.pipeline.policies import RetryPolicy
    from azure.storage.blob import ExponentialRetry

    from corpus.app.runtime import Runtime
    from corpus.store.settings import Settings
    from corpus.store.storage import FUNCTION_RETRY

    rt = Runtime.create(Settings.from_env({"CorpusStorage": DEAD}))
    policies = [
        next(p for p in client._pipeline._impl_policies if hasattr(p, "total_retries"))
        for client in (rt.clients.blob, rt.clients.queue, rt.clients.table_client("Images")._client._client)
    ]
    blob, queue, table = policies
    for p in (blob, queue):
        assert type(p).__name__ == ExponentialRetry.__name__ and p.total_retries == FUNCTION_RETRY["retry_total"]
        assert (p.initial_backoff, p.increment_base) == (1, 2)
    assert isinstance(table, RetryPolicy) and table.total_retries == FUNCTION_RETRY["retry_total"]
    assert (table.backoff_factor, table.backoff_max) == (1.0, 30)
