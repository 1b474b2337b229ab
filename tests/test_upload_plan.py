from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain.errors import InvalidNameError
from corpus.upload.plan import Action, Skip, classify, content_type, decide, parse_extensions, relative_name, staged_name

EXT = parse_extensions(None)


@pytest.mark.parametrize(
    ("name", "skip"),
    [
        ("a.jpg", None), ("A.JPEG", None), ("b.PnG", None), ("c.tiff", None), ("d.webp", None),
        (".DS_Store", Skip.JUNK), ("Thumbs.db", Skip.JUNK), ("desktop.ini", Skip.JUNK), ("._a.jpg", Skip.JUNK),
        (".hidden.jpg", Skip.HIDDEN), ("notes.txt", Skip.NOT_IMAGE), ("noext", Skip.NOT_IMAGE),
    ],
)  # fmt: skip
def test_classify(name, skip):
    assert classify(name, EXT) == skip


def test_extensions_are_configurable():
    assert parse_extensions("JPG, .png") == {"jpg", "png"}
    assert classify("a.gif", parse_extensions("jpg")) is Skip.NOT_IMAGE
    with pytest.raises(ValueError):
        parse_extensions(" , ")


def test_relative_names_use_slashes_nfc_and_windows_separators():
    nfd = unicodedata.normalize("NFD", "café")
    assert relative_name(["red", nfd, "x.jpg"]) == "red/café/x.jpg"
    assert relative_name(["red\\angry\\robin.jpg"]) == "red/angry/robin.jpg"


@given(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4))
def test_relative_name_never_has_empty_segments(parts):
    rel = relative_name(parts)
    assert "//" not in rel and not rel.startswith("/") and not rel.endswith("/")


def test_staged_name_follows_the_contract():
    assert staged_name("birds", "v1", "red/a b#?%.jpg") == "birds/v1/red/a b#?%.jpg"
    with pytest.raises(InvalidNameError):
        staged_name("Birds", "v1", "a.jpg")


def test_content_types():
    assert content_type("a.JPG") == "image/jpeg" and content_type("a.tif") == "image/tiff"


@pytest.mark.parametrize(
    ("staged", "original", "action"),
    [
        (None, None, Action.UPLOAD),
        ("a" * 32, None, Action.SKIP_STAGED),
        ("b" * 32, None, Action.CONFLICT),
        (None, "a" * 32, Action.SKIP_INGESTED),
        (None, "b" * 32, Action.CONFLICT),
        ("a" * 32, "a" * 32, Action.SKIP_INGESTED),
    ],
)
def test_decide(staged, original, action):
    assert decide("a" * 32, staged, original).action is action


def test_hash_cache_trusts_only_the_same_size_and_mtime(tmp_path):
    from corpus.transfer.hashcache import HashCache

    cache = HashCache(tmp_path / "c.sqlite")
    cache.put("/a.jpg", 10, 111, "a" * 32)
    cache.flush()
    assert cache.get("/a.jpg", 10, 111) == "a" * 32
    assert cache.get("/a.jpg", 11, 111) is None
    assert cache.get("/a.jpg", 10, 112) is None
    assert cache.get("/b.jpg", 10, 111) is None
    cache.close()
    assert HashCache(tmp_path / "c.sqlite").get("/a.jpg", 10, 111) == "a" * 32  # persisted
