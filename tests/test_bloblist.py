"""The SDK-free listing client: its Shared Key signature is the SDK's, its parsing is exact."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import pytest
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain.errors import ConfigError
from corpus.store.settings import Connection
from corpus.transfer.bloblist import BlobLister, parse_connection_string, parse_listing, parse_versions

KEY = base64.b64encode(bytes(range(64))).decode()  # any key: both sides sign with the same one
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(prefix=names, marker=names, path_style=st.booleans())
def test_shared_key_signature_is_the_sdks(prefix: str, marker: str, path_style: bool) -> None:
    url_base = "http://127.0.0.1:10000/acct" if path_style else "https://acct.blob.core.windows.net"
    lister = BlobLister.from_connection(Connection(f"AccountName=acct;AccountKey={KEY};BlobEndpoint={url_base}"))
    query = {"restype": "container", "comp": "list", "prefix": prefix, "delimiter": "/", "maxresults": "5000"}
    if marker:
        query["marker"] = marker
    url = lister.url("staging", query)
    ours = lister.headers(url, query)
    request = HttpRequest("GET", url, headers={k: v for k, v in ours.items() if k != "Authorization"})
    SharedKeyCredentialPolicy("acct", KEY).on_request(PipelineRequest(request, PipelineContext(None)))
    assert ours["Authorization"] == request.headers["Authorization"]


@given(name=names.filter(bool), size=st.integers(0, 10**9), with_md5=st.booleans())
def test_shared_key_signature_of_a_put_blob_is_the_sdks(name: str, size: int, with_md5: bool) -> None:
    # corpus.upload.sender signs Put Blob (a body, Content-MD5, If-None-Match) with the same function.
    from urllib.parse import quote

    lister = BlobLister.from_connection(
        Connection(f"AccountName=acct;AccountKey={KEY};BlobEndpoint=https://acct.blob.core.windows.net")
    )
    url = f"{lister.account_url}/staging/{quote(name.encode('utf-8', 'surrogatepass'), safe='/~')}"
    extra = {
        "x-ms-blob-type": "BlockBlob",
        "Content-Length": str(size),
        "If-None-Match": "*",
        "x-ms-blob-content-type": "image/jpeg",
    }
    if with_md5:
        extra |= {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-ms-blob-content-md5": "1B2M2Y8AsgTpgAmY7PhCfg=="}
    ours = lister.signed("PUT", url, {}, extra)
    request = HttpRequest("PUT", url, headers={k: v for k, v in ours.items() if k != "Authorization"})
    SharedKeyCredentialPolicy("acct", KEY).on_request(PipelineRequest(request, PipelineContext(None)))
    assert ours["Authorization"] == request.headers["Authorization"]


def test_connection_strings() -> None:
    sas = "sv=2025-11-05&ss=b&sig=abc%2Fdef%3D"
    lister = BlobLister.from_connection(Connection(f"BlobEndpoint=https://x.example/;SharedAccessSignature={sas}"))
    assert lister.account_url == "https://x.example" and lister.sas == sas and lister.account_key is None
    assert "Authorization" not in lister.headers(lister.url("c", {"comp": "list"}), {"comp": "list"})
    china = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.chinacloudapi.cn"
    lister = BlobLister.from_connection(Connection(china))
    assert lister.account_url == "https://acct.blob.core.chinacloudapi.cn" and lister.account_key == bytes(range(64))
    dev = BlobLister.from_connection(Connection("UseDevelopmentStorage=true"))
    assert dev.account_url == "http://127.0.0.1:10000/devstoreaccount1" and dev.account_key
    assert parse_connection_string("A=1;B=x==;")["b"] == "x=="
    with pytest.raises(ConfigError):
        parse_connection_string("not a connection string")


@dataclass
class _Token:
    token: str
    expires_on: int


class _Identity:
    """Stands in for DefaultAzureCredential: counts how often a token is fetched."""

    def __init__(self, lifetime: int) -> None:
        self.lifetime, self.calls = lifetime, 0

    def get_token(self, *scopes: str) -> _Token:
        import time

        self.calls += 1
        assert scopes == ("https://storage.azure.com/.default",)
        return _Token(f"t{self.calls}", int(time.time()) + self.lifetime)


def test_bearer_token_is_cached_until_near_expiry() -> None:
    identity = _Identity(lifetime=3600)
    lister = BlobLister.from_connection(Connection(blob_uri="https://acct.blob.core.windows.net/"), identity)
    for _ in range(3):
        assert lister.headers("https://acct.blob.core.windows.net/c?comp=list", {})["Authorization"] == "Bearer t1"
    short = _Identity(lifetime=60)  # within the 5-minute margin: fetched afresh each time
    lister = BlobLister.from_connection(Connection(blob_uri="https://acct.blob.core.windows.net"), short)
    lister.headers("u", {})
    lister.headers("u", {})
    assert short.calls == 2


def test_listing_parse_decodes_names_and_md5s() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>'
        b"<Blob><Name>p/a &amp; b.jpg</Name><Properties><Content-MD5>AAECAwQFBgcICQoLDA0ODw==</Content-MD5></Properties></Blob>"
        b'<Blob><Name Encoded="true">p/%EF%BF%BEodd.jpg</Name><Properties/></Blob>'
        b"<BlobPrefix><Name>p/sub/</Name></BlobPrefix>"
        b"</Blobs><NextMarker>m2</NextMarker></EnumerationResults>"
    )
    out: dict[str, str] = {}
    assert parse_listing(body, "p/", out) == "m2"
    assert out == {"a & b.jpg": bytes(range(16)).hex(), "\ufffeodd.jpg": ""}


@pytest.mark.parametrize("proxied", [False, True])
def test_listing_on_azurite_over_either_transport(settings, clients, monkeypatch, proxied: bool) -> None:
    # With a proxy (or CA bundle) configured, listings go through requests, which honours it the
    # way the SDK does; here the proxy is for https only, so plain-http Azurite is reached directly.
    from corpus.transfer import bloblist

    monkeypatch.setattr(bloblist, "_the_transport", None)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    if proxied:
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    staging = clients.container(settings.staging_container)
    staging.upload_blob("d/v/x & y/a.jpg", b"a")
    staging.upload_blob("d/v/x & y/deeper/b.jpg", b"b")
    lister = BlobLister.from_connection(settings.connection)
    listed = lister.list_md5s(settings.staging_container, "d/v/x & y/")
    assert listed == {"a.jpg": hashlib.md5(b"a").hexdigest()}  # direct children only, with their MD5
    assert lister.list_md5s("no-such-container", "d/") == {}
    assert type(bloblist._transport()).__name__ == ("_RequestsTransport" if proxied else "_StdlibTransport")


def test_a_flat_page_lists_nested_names_and_says_whether_it_was_all(settings, clients) -> None:
    staging = clients.container(settings.staging_container)
    for name in ("d/v/a/1.jpg", "d/v/a/b/2.jpg", "d/v/c/3.jpg", "d/v2/x.jpg"):
        staging.upload_blob(name, name.encode())
    lister = BlobLister.from_connection(settings.connection)
    everything = {n: hashlib.md5(f"d/v/{n}".encode()).hexdigest() for n in ("a/1.jpg", "a/b/2.jpg", "c/3.jpg")}
    assert lister.list_page(settings.staging_container, "d/v/", 3) == (everything, True)
    assert lister.list_page(settings.staging_container, "d/v/", 2) == (
        {n: everything[n] for n in ("a/1.jpg", "a/b/2.jpg")},
        False,
    )
    assert lister.list_page("no-such-container", "d/", 5) == ({}, True)


def _listing_xml(entries: list[tuple[str, str, str, bool]], marker: str) -> bytes:
    """A List Blobs page as the service writes it (ElementTree escapes the text)."""
    from urllib.parse import quote
    from xml.etree import ElementTree as ET

    root = ET.Element("EnumerationResults", ContainerName="c")
    blobs = ET.SubElement(root, "Blobs")
    for name, etag, blob_type, encoded in entries:
        blob = ET.SubElement(blobs, "Blob")
        el = ET.SubElement(blob, "Name")
        el.text = quote(name) if encoded else name
        if encoded:
            el.set("Encoded", "true")
        props = ET.SubElement(blob, "Properties")
        ET.SubElement(props, "Content-Length").text = "3"
        ET.SubElement(props, "Etag").text = etag
        ET.SubElement(props, "BlobType").text = blob_type
    ET.SubElement(root, "NextMarker").text = marker
    return b'<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(root, encoding="utf-8")


xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)  # what XML 1.0 can carry


@given(
    entries=st.lists(
        st.tuples(
            xml_text.filter(bool),
            st.sampled_from(['"0x8D1"', "0x8DABC", "x&y"]),
            st.sampled_from(["BlockBlob", "AppendBlob"]),
            st.booleans(),
        ),
        max_size=8,
    ),
    marker=xml_text,
)
def test_versions_parse_reads_what_the_service_wrote(entries: list[tuple[str, str, str, bool]], marker: str) -> None:
    # corpus host's event source reads the staging listing with regular expressions (issue 26):
    # any name, escaped or Encoded, comes back exactly, with its bare ETag and type.
    listed, next_marker = parse_versions(_listing_xml(entries, marker))
    assert [(x.name, x.etag, x.blob_type) for x in listed] == [(n, e.strip('"'), t) for n, e, t, _ in entries]
    assert next_marker == marker


def test_versions_on_azurite_match_the_sdks_listing(settings, clients) -> None:
    staging = clients.container(settings.staging_container)
    for name in ("d/v/a & b <c>.jpg", "d/v/ünï 'q' \"d\".jpg", "d/v/x/../y.jpg", "e/z.jpg"):
        staging.upload_blob(name, name.encode())
    lister = BlobLister.from_connection(settings.connection)
    ours = [(x.name, x.etag, x.blob_type) for x in lister.list_versions(settings.staging_container)]
    sdk = [(b.name, b.etag.strip('"'), "BlockBlob") for b in staging.list_blobs()]
    assert ours == sdk and len(ours) == 4
    assert [x.name for x in lister.list_versions(settings.staging_container, "d/")] == [n for n, _, _ in sdk[:3]]
    assert list(lister.list_versions("no-such-container")) == []
