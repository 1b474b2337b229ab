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
