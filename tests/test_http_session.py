"""The shared HTTP session decides once what ``requests`` would look up on every request."""

from __future__ import annotations

import requests

from corpus.store.http import ca_verify, configure, proxies_configured
from corpus.transfer import bloblist


def test_no_proxy_means_no_per_request_environment_lookups() -> None:
    s = requests.Session()
    configure(s, {"PATH": "/bin"})
    assert s.trust_env is False
    assert s.verify is True


def test_a_ca_bundle_is_kept_when_the_environment_is_no_longer_read() -> None:
    s = requests.Session()
    configure(s, {"REQUESTS_CA_BUNDLE": "/etc/corp.pem", "CURL_CA_BUNDLE": "/other.pem"})
    assert s.trust_env is False
    assert s.verify == "/etc/corp.pem"
    assert ca_verify({"CURL_CA_BUNDLE": "/other.pem"}) == "/other.pem"


def test_a_proxy_in_any_case_keeps_requests_reading_the_environment() -> None:
    for name in ("HTTPS_PROXY", "http_proxy", "All_Proxy"):
        s = requests.Session()
        configure(s, {name: "http://proxy:3128"})
        assert s.trust_env is True, name
        assert proxies_configured({name: "http://proxy:3128"})
    assert not proxies_configured({"HTTPS_PROXY": ""})  # set but empty: requests ignores it too


def test_the_stdlib_listing_transport_serves_a_ca_bundle_without_requests(monkeypatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(bloblist, "_the_transport", None)
    assert isinstance(bloblist._transport(), bloblist._StdlibTransport)
    assert bloblist.ca_bundle() == "/etc/ssl/certs/ca-certificates.crt"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setattr(bloblist, "_the_transport", None)
    assert isinstance(bloblist._transport(), bloblist._RequestsTransport)
    monkeypatch.setattr(bloblist, "_the_transport", None)
