"""The SDK-free listing client: its Shared Key signature is the SDK's, its parsing is exact."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy
from hypothesis import given
from hypothesis import strategies as st

from corpus.domain.errors import ConfigError
from corpus.store.settings import Connection
from corpus.transfer.bloblist import BlobLister, _versions_xml, parse_connection_string, parse_listing, parse_versions

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
    body = _listing_xml(entries, marker)
    listed, next_marker = parse_versions(body)
    assert _versions_xml(body) == (listed, next_marker)  # the byte scan and the XML parser agree
    assert [(x.name, x.etag, x.blob_type) for x in listed] == [(n, e.strip('"'), t) for n, e, t, _ in entries]
    assert next_marker == marker


def test_versions_on_azurite_match_the_sdks_listing(settings, clients) -> None:
    staging = clients.container(settings.staging_container)
    for name in ("d/v/a & b <c>.jpg", "d/v/ünï 'q' \"d\".jpg", "d/v/x/%2E%2E/y.jpg", "e/z.jpg"):
        staging.upload_blob(name, name.encode())
    lister = BlobLister.from_connection(settings.connection)
    ours = [(x.name, x.etag, x.blob_type) for x in lister.list_versions(settings.staging_container)]
    sdk = [(b.name, b.etag.strip('"'), "BlockBlob") for b in staging.list_blobs()]
    assert ours == sdk and len(ours) == 4
    assert [x.name for x in lister.list_versions(settings.staging_container, "d/")] == [n for n, _, _ in sdk[:3]]
    assert list(lister.list_versions("no-such-container")) == []


def _xml_valid(c: str) -> bool:
    o = ord(c)
    return o in (0x9, 0xA, 0xD) or 0x20 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or o >= 0x10000


def _escaped(text: str, refs: bool) -> str:
    """Text as an XML writer may put it: the markup characters escaped, CR as a reference (XML
    would read a literal one as LF), optionally more references (``refs``)."""
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    return out.replace('"', "&#34;").replace("é", "&#xE9;") if refs else out


@st.composite
def listings(draw: st.DrawFn) -> tuple[bytes, str]:
    """A listing page as the service writes it (hostile names, each XML-escaped, or percent-encoded
    with ``Encoded="true"`` when it holds a character XML cannot carry), and its prefix."""
    prefix = draw(st.sampled_from(["", "d/v/", "a & b/<v>/"]))
    refs = draw(st.booleans())
    blobs = []
    for name in draw(st.lists(names, max_size=8)):
        full = prefix + name
        if all(_xml_valid(c) for c in full):
            tag = f"<Name>{_escaped(full, refs)}</Name>"
        else:
            tag = f'<Name Encoded="true">{quote(full, safe="")}</Name>'
        md5 = draw(st.one_of(st.none(), st.binary(min_size=16, max_size=16)))
        md5_tag = "" if md5 is None else f"<Content-MD5>{base64.b64encode(md5).decode()}</Content-MD5>"
        props = f"<Properties>{md5_tag}</Properties>" if md5_tag else "<Properties/>"
        blobs.append(f"<Blob>{tag}{props}</Blob>")
    valid = names.filter(lambda n: all(_xml_valid(c) for c in n))
    subfolders = draw(st.lists(valid, max_size=2))
    folders = "".join(f"<BlobPrefix><Name>{_escaped(prefix + p, refs)}/</Name></BlobPrefix>" for p in subfolders)
    marker = draw(st.one_of(st.just(""), valid))
    next_marker = f"<NextMarker>{_escaped(marker, refs)}</NextMarker>" if marker else "<NextMarker/>"
    body = (
        f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="c"><Prefix>{_escaped(prefix, refs)}</Prefix>'
        f"<Blobs>{''.join(blobs)}{folders}</Blobs>{next_marker}</EnumerationResults>"
    )
    return body.encode("utf-8"), prefix


@given(listings())
def test_the_byte_scan_of_a_listing_is_the_xml_parsers_answer_or_none(listing: tuple[bytes, str]) -> None:
    """The scan is only a shortcut: on any page it gives the XML parser's result, or leaves it to it."""
    from corpus.transfer.bloblist import _parse_plain, _parse_tree

    body, prefix = listing
    exact: dict[str, str] = {}
    marker = _parse_tree(body, prefix, exact)
    fast = _parse_plain(body, prefix)
    if fast is not None:
        assert fast == (exact, marker)
    got: dict[str, str] = {}
    assert (parse_listing(body, prefix, got), got) == (marker, exact)
    if b"&#" not in body and b"\r" not in body:
        assert fast is not None  # the service's usual page is read by the scan, not the parser


def test_the_byte_scan_leaves_unusual_markup_to_the_xml_parser() -> None:
    from corpus.transfer.bloblist import _parse_plain

    blob = b"<Blob><Name>p/a.jpg</Name><Properties><Content-MD5>AAECAwQFBgcICQoLDA0ODw==</Content-MD5></Properties></Blob>"
    plain = b'<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>' + blob + b"</Blobs></EnumerationResults>"
    assert _parse_plain(plain, "p/") == ({"a.jpg": bytes(range(16)).hex()}, "")
    unusual = (
        plain.replace(b"<Blobs>", b"<Blobs><!-- <Blob><Name>p/ghost</Name></Blob> -->"),  # a comment hiding markup
        plain.replace(b"<Name>p/a.jpg</Name>", b"<Name><![CDATA[p/a.jpg]]></Name>"),
        plain.replace(b"<Blob>", b'<Blob kind="x">'),
        plain.replace(b"<Name>p/a.jpg</Name>", b"<Name>p/a&#46;jpg</Name>"),
        plain.replace(b"utf-8", b"iso-8859-1"),
        plain.replace(b"<Blobs>", b"<Blobs><?pi x?>"),
        plain.replace(b"<Blob><Name>", b"<Blob>\n<Name>"),
    )
    for body in unusual:
        assert _parse_plain(body, "p/") is None, body
        out: dict[str, str] = {}
        assert parse_listing(body, "p/", out) == ""  # the XML parser reads each (the comment's ghost is no blob)
        assert out == {"a.jpg": bytes(range(16)).hex()}, body


def test_a_lister_that_must_not_retry_the_unreached_fails_at_once_then_retries_once_answered(monkeypatch) -> None:
    """``retry_unreached=False`` (corpus upload's lister): storage that never answered fails on the
    first refused connection; once it has answered, a dropped connection is retried as before."""
    from corpus.transfer import bloblist

    class Flaky:
        def __init__(self, script: list[object]) -> None:
            self.script, self.calls = script, 0

        def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
            self.calls += 1
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return 200, b"<EnumerationResults><Blobs/></EnumerationResults>"

    down = Flaky([ConnectionRefusedError("refused")] * 3)
    monkeypatch.setattr(bloblist, "_transport", lambda: down)
    lister = BlobLister("http://127.0.0.1:9/x", retry_delays=(0.0, 0.0), retry_unreached=False)
    with pytest.raises(bloblist.ListingError, match=r"cannot reach .*ConnectionRefusedError") as err:
        lister.list_page("staging", "d/v/", 10)
    assert err.value.status is None and down.calls == 1

    up = Flaky([None, ConnectionResetError("reset"), None])  # answers, drops one connection, answers
    monkeypatch.setattr(bloblist, "_transport", lambda: up)
    lister = BlobLister("http://127.0.0.1:9/x", retry_delays=(0.0, 0.0), retry_unreached=False)
    assert lister.list_page("staging", "d/v/", 10) == ({}, True)
    assert lister.list_page("staging", "d/v/", 10) == ({}, True)
    assert up.calls == 3

    patient = Flaky([ConnectionRefusedError("refused"), None])  # the default lister (pull) retries
    monkeypatch.setattr(bloblist, "_transport", lambda: patient)
    assert BlobLister("http://127.0.0.1:9/x", retry_delays=(0.0,)).list_page("staging", "d/v/", 10) == ({}, True)
    assert patient.calls == 2


def test_the_development_account_is_the_sdks_and_loads_no_sdk() -> None:
    """``UseDevelopmentStorage=true`` (the sample settings) lists without importing the blob SDK."""
    import subprocess
    import sys

    from azure.storage.blob._shared.parser import DEVSTORE_ACCOUNT_KEY, DEVSTORE_ACCOUNT_NAME

    from corpus.transfer import bloblist

    assert (bloblist.DEVSTORE_ACCOUNT_NAME, bloblist.DEVSTORE_ACCOUNT_KEY) == (DEVSTORE_ACCOUNT_NAME, DEVSTORE_ACCOUNT_KEY)
    code = (
        "import sys; from corpus.store.settings import Connection; from corpus.transfer.bloblist import BlobLister;"
        "BlobLister.from_connection(Connection('UseDevelopmentStorage=true'));"
        "print(sorted(m for m in sys.modules if m.startswith('azure')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)


def test_a_prefetched_page_is_asked_once_and_taken_by_the_same_call_only(monkeypatch) -> None:
    from corpus.transfer import bloblist

    calls: list[str] = []
    answers = {"a/": b"<EnumerationResults><Blobs><Blob><Name>a/x</Name><Properties/></Blob></Blobs></EnumerationResults>"}

    class Counting:
        def get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
            calls.append(url)
            if "prefix=down" in url:
                return 403, b"<Error><Code>AuthorizationFailure</Code><Message>no</Message></Error>"
            return 200, answers["a/"]

    monkeypatch.setattr(bloblist, "_transport", Counting)
    lister = BlobLister("http://127.0.0.1:9/x", retry_delays=())
    lister.prefetch_page("c", "a/", 10)
    assert lister.list_page("c", "a/", 5) == ({"x": ""}, True)  # another limit: asked afresh
    assert lister.list_page("c", "a/", 10) == ({"x": ""}, True)  # the prefetched answer
    assert lister.list_page("c", "a/", 10) == ({"x": ""}, True)  # taken once: asked again
    assert len(calls) == 3
    lister.prefetch_page("c", "down", 10)
    with pytest.raises(bloblist.ListingError, match="403 AuthorizationFailure"):  # its error, raised to the taker
        lister.list_page("c", "down", 10)
    assert len(calls) == 4
