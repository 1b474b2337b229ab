from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain.errors import InvalidNameError
from corpus.domain.paths import ROOT_PATH, SetRef, is_junk_file, parse_staged_name, validate_domain


def test_parse_nested_set():
    s = parse_staged_name("birds/v1/red/angry/robin/img 1.jpg")
    assert s.set == SetRef("birds", ("red", "angry", "robin"), "v1")
    assert s.file == "img 1.jpg"
    assert s.original_blob == "original/red/angry/robin/v1/img 1.jpg"
    assert s.set.path == "red/angry/robin"
    assert s.set.transform_prefix("thumbnail", "1") == "transform/thumbnail/1/red/angry/robin/v1/"


def test_root_set_has_no_double_slash():
    s = parse_staged_name("birds/v1/img.jpg")
    assert s.set.dirs == () and s.set.path == ROOT_PATH
    assert s.original_blob == "original/v1/img.jpg"
    assert s.set.transform_prefix("t", "2") == "transform/t/2/v1/"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("birds/img.jpg", "too few path segments"),
        ("img.jpg", "too few path segments"),
        ("birds/v1/../x.jpg", "'..'"),
        ("birds/v1/./x.jpg", "'..'"),
        ("birds/v1/a//x.jpg", "empty path segment"),
        ("/birds/v1/x.jpg", "empty path segment"),
        ("birds/v1/dir/", "folder marker"),
        ("Birds/v1/x.jpg", "invalid domain"),
        ("bi/v1/x.jpg", "invalid domain"),
        ("bir--ds/v1/x.jpg", "invalid domain"),
        ("-birds/v1/x.jpg", "invalid domain"),
        ("b" * 64 + "/v1/x.jpg", "invalid domain"),
        ("azure-webjobs-hosts/v1/x.jpg", "reserved"),
        ("birds/v 1/x.jpg", "invalid version"),
        ("birds/" + "v" * 65 + "/x.jpg", "invalid version"),
        ("birds/v1/ /", "folder marker"),
        ("birds/v1/a/ ", "empty file name"),
    ],
)
def test_names_outside_the_contract_are_refused_with_a_reason(name, reason):
    with pytest.raises(InvalidNameError, match=reason.replace("(", r"\(").replace(".", r"\.")):
        parse_staged_name(name)


def test_reserved_containers_cannot_be_domains():
    with pytest.raises(InvalidNameError, match="used by the pipeline"):
        parse_staged_name("staging/v1/x.jpg", reserved=frozenset({"staging"}))


def test_odd_but_valid_names_are_kept_verbatim():
    s = parse_staged_name("birds/v1.0_rc-2/ünï code/100%/#?/a b#?.jpg")
    assert s.set.dirs == ("ünï code", "100%", "#?") and s.file == "a b#?.jpg"


@pytest.mark.parametrize("name", [".DS_Store", "Thumbs.db", "THUMBS.DB", "desktop.ini", "._img.jpg"])
def test_junk(name):
    assert is_junk_file(name)


def test_not_junk():
    assert not is_junk_file("img.jpg") and not is_junk_file(".hidden.jpg")


@given(st.from_regex(r"\A[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}\Z"))
def test_every_valid_container_name_is_a_domain(name):
    if not name.startswith(("azure-webjobs", "scm-releases")):
        assert validate_domain(name) == name
