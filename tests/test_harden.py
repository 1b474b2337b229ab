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


def test_sas_signatures_are_never_printed(tmp_path) -> None:
    """A CLI error with a SAS connection to a dead endpoint; ``upload --json`` and the failures file."""
    import json
    import os

    from corpus.upload.report import Failure, Summary, write_failures
    from tests.support import run_cli

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage"))}
    env.update(CorpusStorage=SAS_CONNECTION, CORPUS_CACHE_DIR=str(tmp_path / "cache"))
    status = run_cli(env, tmp_path, "status")
    assert status.returncode == 1 and "sig=REDACTED" in status.stderr
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
