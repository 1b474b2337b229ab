"""Put Blob From URL on the wire: Azurite 3.35 cannot run it, so the SDK's request is caught at its
transport (a seam the SDK offers: ``transport=``) and the adapter's answers to Azure's replies checked.

What Azure documents for the request (Put Blob From URL, service version ≥ 2020-04-08): ``PUT`` on
the destination with ``x-ms-copy-source``, ``If-None-Match: *`` (never overwrite an original),
``x-ms-source-if-match`` (the validated version only), ``x-ms-source-content-md5`` (the service
computes the source's MD5 and refuses a mismatch), ``x-ms-copy-source-blob-properties: false`` with
the validated ``x-ms-blob-content-type`` and ``x-ms-blob-content-md5``, and the source authorised by
``x-ms-copy-source-authorization: Bearer …`` (identity) or a SAS in the source URL (account key).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.pipeline.transport import HttpResponse, HttpTransport
from azure.storage.blob import BlobServiceClient

from corpus.domain.errors import BlobExists, CopyFailed, SourceChanged
from corpus.store.azure_ports import AzureBlobStore, put_from_url_supported
from corpus.store.ports import Expected
from corpus.store.settings import Connection, Settings
from corpus.store.storage import Clients

KEY = base64.b64encode(b"k" * 64).decode()
ACCOUNT = "https://acct.blob.core.windows.net"
CONN = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
MD5 = hashlib.md5(b"png").hexdigest()


class _Reply(HttpResponse):
    def __init__(self, request: Any, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        super().__init__(request, None)
        self.status_code = status
        self.headers = headers
        self.reason = "reply"
        self.content_type = headers.get("Content-Type")
        self._body = body

    def body(self) -> bytes:
        return self._body


class Wire(HttpTransport):
    """Records each request; answers with the next canned (status, error code) reply."""

    def __init__(self, *replies: tuple[int, str]) -> None:
        self.sent: list[Any] = []
        self.replies = list(replies)

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> HttpResponse:
        self.sent.append(request)
        status, code = self.replies.pop(0) if self.replies else (201, "")
        headers = {"ETag": '"0x8DNEW"', "x-ms-request-id": "r", "x-ms-version": "2025-01-05", "Content-Length": "0"}
        body = b""
        if code:
            body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>m</Message></Error>'.encode()
            headers |= {"x-ms-error-code": code, "Content-Type": "application/xml", "Content-Length": str(len(body))}
        return _Reply(request, status, headers, body)


def store_on(wire: Wire, credential: Any = None) -> AzureBlobStore:
    if credential is None:
        clients = Clients(Connection(connection_string=CONN))
        client = BlobServiceClient.from_connection_string(CONN, transport=wire, retry_total=0)
    else:
        clients = Clients(Connection(blob_uri=ACCOUNT), token_credential=credential)
        client = BlobServiceClient(ACCOUNT, credential=credential, transport=wire, retry_total=0)
    clients.__dict__["blob"] = client  # the seam: Clients.blob is a cached property
    return AzureBlobStore(clients, put_from_url=True)


def copy(store: AzureBlobStore, expect: Expected | None = None) -> Any:
    return store.copy_once(
        "birds", "original/red/v1/a.png", source_container="staging", source_name="birds/v1/red/a.png",
        source_etag='"0x8DSRC"', expect=expect or Expected(MD5, "image/png"),
    )  # fmt: skip


def test_one_request_carries_the_conditions_the_md5_and_the_headers() -> None:
    wire = Wire((201, ""))
    state = copy(store_on(wire))
    assert (state.status, state.etag, state.verified) == ("success", '"0x8DNEW"', True)
    assert len(wire.sent) == 1  # replaces Copy Blob + Get Blob Properties (+ Set Blob Properties)
    req = wire.sent[0]
    h = {k.lower(): v for k, v in req.headers.items()}
    assert req.method == "PUT"
    assert urlsplit(req.url).path == "/birds/original/red/v1/a.png"
    assert h["x-ms-blob-type"] == "BlockBlob" and h["content-length"] == "0"
    assert h["if-none-match"] == "*"
    assert h["x-ms-source-if-match"] == '"0x8DSRC"'
    assert base64.b64decode(h["x-ms-source-content-md5"]).hex() == MD5
    assert base64.b64decode(h["x-ms-blob-content-md5"]).hex() == MD5
    assert h["x-ms-blob-content-type"] == "image/png"
    assert h["x-ms-copy-source-blob-properties"] == "false"
    assert h["x-ms-version"] >= "2020-04-08"
    source = urlsplit(h["x-ms-copy-source"])
    assert (source.netloc, source.path) == ("acct.blob.core.windows.net", "/staging/birds/v1/red/a.png")
    sas = parse_qs(source.query)  # account key: a short read-only SAS for the source
    assert sas["sp"] == ["r"] and sas["sr"] == ["b"] and "sig" in sas
    assert "x-ms-copy-source-authorization" not in h


class _Token:
    token = "tok"
    expires_on = 2**31


class _Identity:
    def get_token(self, *scopes: str, **kwargs: Any) -> _Token:
        assert scopes == ("https://storage.azure.com/.default",)
        return _Token()


def test_with_an_identity_the_source_is_authorised_by_a_bearer_token() -> None:
    wire = Wire((201, ""))
    copy(store_on(wire, _Identity()))
    h = {k.lower(): v for k, v in wire.sent[0].headers.items()}
    assert h["x-ms-copy-source-authorization"] == "Bearer tok"
    assert urlsplit(h["x-ms-copy-source"]).query == ""  # no SAS needed
    assert h["authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("replies", "error"),
    [
        ([(409, "BlobAlreadyExists")], BlobExists),
        ([(412, "SourceConditionNotMet")], SourceChanged),
        ([(404, "CannotVerifyCopySource")], SourceChanged),
        ([(400, "Md5Mismatch")], CopyFailed),
        # Azure's If-None-Match refusal for an existing destination, told apart by a HEAD (200)
        ([(412, "ConditionNotMet"), (200, "")], BlobExists),
    ],
)
def test_azures_refusals_are_the_ports_errors(replies: list[tuple[int, str]], error: type[Exception]) -> None:
    wire = Wire(*replies)
    with pytest.raises(error):
        copy(store_on(wire))


def test_the_capability_is_chosen_from_the_setting_or_the_endpoint() -> None:
    azurite = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        + KEY
        + ";BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    )
    assert put_from_url_supported(Settings.from_env({"CorpusStorage": CONN})) is True
    assert put_from_url_supported(Settings.from_env({"CorpusStorage": azurite})) is False
    assert put_from_url_supported(Settings.from_env({"CorpusStorage": "UseDevelopmentStorage=true"})) is False
    assert put_from_url_supported(Settings.from_env({"CorpusStorage": CONN, "CORPUS_COPY_MODE": "copy"})) is False
    assert put_from_url_supported(Settings.from_env({"CorpusStorage": azurite, "CORPUS_COPY_MODE": "put-from-url"})) is True
