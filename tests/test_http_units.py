"""Pure parts of the HTTP layer: route templates, continuation tokens, requests, escaping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus.app.gallery import e, parse_blob, url
from corpus.app.web import HttpError, Request, status_of
from corpus.devhost.routes import parse
from corpus.domain.errors import ConfigError, InvalidNameError, NotFoundError
from corpus.store.hostconfig import load_route_prefix
from corpus.store.tables import decode_continuation, encode_continuation


def test_route_templates_match_as_the_host_does() -> None:
    r = parse("api/sets/{domain}/images")
    assert r.match("/api/sets/birds/images") == {"domain": "birds"}
    assert r.match("/API/Sets/birds/images") == {"domain": "birds"}  # literals are case-insensitive
    assert r.match("/api/sets/birds") is None
    assert r.match("/api/sets/birds/images/x") is None
    assert r.match("/api/sets/a%2Fb/images") == {"domain": "a/b"}  # decoded within its segment
    assert parse("sets", "api").match("/api/sets") == {}
    assert parse("items/{id:int}").match("/items/12") == {"id": "12"}
    assert parse("items/{id:int}").match("/items/x") is None
    assert parse("items/{id?}").match("/items") == {}
    assert parse("files/{*rest}").match("/files/a/b%20c") == {"rest": "a/b c"}
    assert parse("", "").match("/") == {}


def test_more_specific_templates_sort_first() -> None:
    literal, param, catch_all = parse("gallery/static"), parse("gallery/{domain}"), parse("gallery/{*rest}")
    assert sorted([catch_all, param, literal], key=lambda r: r.precedence) == [literal, param, catch_all]


@pytest.mark.parametrize("bad", ["a/{*x}/b", "a/{x:regex}", "a/{x}/{x}", "a//b", "a/b{x}"])
def test_templates_the_host_would_refuse_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse(bad)


def test_route_prefix_comes_from_host_json(tmp_path: Path) -> None:
    host = tmp_path / "host.json"
    host.write_text(json.dumps({"version": "2.0"}))
    assert load_route_prefix(host) == "api"
    host.write_text(json.dumps({"extensions": {"http": {"routePrefix": "/v1/"}}}))
    assert load_route_prefix(host) == "v1"
    host.write_text(json.dumps({"extensions": {"http": {"routePrefix": 3}}}))
    with pytest.raises(ConfigError):
        load_route_prefix(host)
    assert load_route_prefix(Path(__file__).resolve().parent.parent / "host.json") == ""


@given(st.text(max_size=300), st.none() | st.text(max_size=300))
def test_continuation_tokens_round_trip(pk: str, rk: str | None) -> None:
    token = {"PartitionKey": pk, "RowKey": rk}
    text = encode_continuation(token)
    assert text is not None and text.isascii() and "=" not in text
    assert decode_continuation(text) == token


@pytest.mark.parametrize("bad", ["**", "e30", "WyJhIl0", "eyJwayI6MSwicmsiOm51bGx9", "x" * 5000])
def test_malformed_continuation_tokens_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_continuation(bad)


def test_requests_keep_every_query_value() -> None:
    req = Request.of("get", "http://h/api/sets?tag=a&tag=b%2Cc&domain=&limit=5", {"domain": "x"}, {"If-None-Match": "1"})
    assert req.args("tag") == ("a", "b,c") and req.arg("domain") is None and req.limit(9, 10) == 5
    assert req.headers["if-none-match"] == "1" and req.method == "GET"
    with pytest.raises(HttpError):
        Request.of("GET", "http://h/?limit=11", {}, {}).limit(9, 10)


def test_errors_map_to_statuses_without_internals() -> None:
    assert status_of(InvalidNameError("bad name"))[0] == 400
    assert status_of(NotFoundError("none"))[0] == 404
    assert status_of(RuntimeError("secret internals")) == (500, "internal error (logged on the server)")


@given(st.text())
def test_escaped_text_holds_no_markup(text: str) -> None:
    out = e(text)
    assert not set("<>\"'") & set(out)


def test_urls_encode_every_value() -> None:
    assert url("/gallery/d", tag=["<a>", "b&c"], transform=None) == "/gallery/d?tag=%3Ca%3E&tag=b%26c"


def test_blob_names_parse_unambiguously() -> None:
    ref, t, file = parse_blob("original/v2/v1/x.jpg")
    assert (ref.dirs, ref.version, t, file) == (("v2",), "v1", None, "x.jpg")
    ref, t, file = parse_blob("original/v2/x.jpg")
    assert (ref.dirs, ref.version, file) == ((), "v2", "x.jpg")
    ref, t, file = parse_blob("transform/thumbnail/1/a/b/v1/x.jpg")
    assert (ref.dirs, ref.version, t, file) == (("a", "b"), "v1", ("thumbnail", "1"), "x.jpg")
    with pytest.raises(HttpError):
        parse_blob("transform/x/y.jpg")


def test_the_dev_host_serves_http_triggers_as_the_functions_host_does() -> None:
    """In process: route values, every query value in the URL, 404 for unknown paths and methods,
    500 with an empty body when a function raises, HEAD without a body."""
    import urllib.error
    import urllib.request

    import azure.functions as func

    from corpus.devhost.discovery import Target
    from corpus.devhost.httpserver import HttpHost

    seen: list[func.HttpRequest] = []

    def echo(req: func.HttpRequest) -> func.HttpResponse:
        seen.append(req)
        body = json.dumps({"route": dict(req.route_params), "params": dict(req.params), "url": req.url})
        return func.HttpResponse(body, status_code=201, headers={"X-Test": "1"}, mimetype="application/json")

    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("secret internals")

    targets = [
        Target("echo", "http", "things/{name}", "", "req", echo, ("GET", "HEAD")),
        Target("boom", "http", "boom", "", "req", boom, ("GET",)),
    ]
    host = HttpHost(targets, "", 0)
    host.start()

    def get(path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(host.url + path, method=method), timeout=10) as res:
                return res.status, {k.lower(): v for k, v in res.headers.items()}, res.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    try:
        status, headers, body = get("/things/a%20b?tag=x&tag=y")
        assert status == 201 and headers["x-test"] == "1" and headers["content-type"] == "application/json"
        doc = json.loads(body)
        assert doc["route"] == {"name": "a b"} and doc["params"] == {"tag": "x,y"} and doc["url"].endswith("?tag=x&tag=y")
        assert isinstance(seen[0], func.HttpRequest) and seen[0].method == "GET"
        assert get("/things/a", "HEAD")[0] == 201 and get("/things/a", "HEAD")[2] == b""
        assert get("/things/a", "POST")[0] == 404
        assert get("/things")[0] == 404
        status, _, body = get("/boom")
        assert status == 500 and body == b""
    finally:
        host.stop()
