"""Hardening round 3 (issue 25), end to end: the real ``corpus host`` on a private Azurite.

Each test failed on the code before its fix (the closing note of issue 25 says how each was checked).
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corpus.app.runtime import Runtime
from corpus.store.settings import Settings
from tests.support import Azurite, free_port, host_command, photo, prepare_app_dir, run_host, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Served:
    base: str
    env: dict[str, str]
    rt: Runtime
    app_dir: Path

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, {k.lower(): v for k, v in res.headers.items()}, res.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two photos ingested by the host, then the host serving HTTP."""
    tmp = tmp_path_factory.mktemp("harden3")
    az = Azurite(tmp).start()
    host = None
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
        conn = az.connection_string
        env = {**base, "CorpusStorage": conn, "AzureWebJobsStorage": conn, "PYTHONUNBUFFERED": "1"}
        rt = Runtime.create(Settings.from_env(env))
        rt.ensure_resources()
        app_dir = prepare_app_dir(tmp)
        for i in range(2):
            rt.blobs.put(rt.settings.staging_container, f"birds/v1/red/{i}.jpg", photo(i), "image/jpeg")
        run_host(env, app_dir)
        port = free_port()
        log = (tmp / "host.log").open("wb")
        cmd = host_command(app_dir, "--port", str(port))
        host = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=log)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert host is not None and host.poll() is None, (tmp / "host.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(url + "/api/sets?limit=1", timeout=2).close()
                return True
            except OSError:
                return False

        wait_for(up, 60, "corpus host serving HTTP")
        yield Served(url, env, rt, app_dir)
    finally:
        if host is not None:
            host.terminate()
            host.wait(20)
        az.stop()


# -- B8: If-None-Match: * on /gallery/{domain}/file ---------------------------------------------


FILE = "/gallery/birds/file?blob=original/red/v1/0.jpg"


def test_if_none_match_star_and_lists_on_a_stored_image_follow_rfc_9110(served: Served) -> None:
    """B8: ``If-None-Match: *`` on an existing image answered 503 (Azurite/Azure refuse a read
    conditioned on ``*``). RFC 9110 13.1.2: ``*`` is false when the resource exists, and a GET or
    HEAD whose If-None-Match is false is answered 304; a list matches if any tag matches (weakly)."""
    status, headers, body = served.get(FILE)
    assert status == 200 and body[:2] == b"\xff\xd8"
    etag = headers["etag"]
    for method in ("GET", "HEAD"):
        status, h, body = served.get(FILE, {"If-None-Match": "*"}, method)
        assert (status, body, h.get("etag")) == (304, b"", etag), method
    for value in (f'"nope", {etag}', f"W/{etag}"):
        status, h, body = served.get(FILE, {"If-None-Match": value})
        assert (status, body) == (304, b""), value
    status, _, body = served.get(FILE, {"If-None-Match": '"nope", W/"other"'})
    assert status == 200 and body[:2] == b"\xff\xd8"
    # No such image: '*' is true, the request goes on and finds nothing
    status, _, _ = served.get("/gallery/birds/file?blob=original/red/v1/none.jpg", {"If-None-Match": "*"})
    assert status == 404
    # A preview not made yet: '*' is true, it is rendered and served; once made, '*' is 304
    preview = "/gallery/birds/preview?blob=original/red/v1/1.jpg"
    status, _, body = served.get(preview, {"If-None-Match": "*"})
    assert status == 200 and body
    status, _, body = served.get(preview, {"If-None-Match": "*"})
    assert (status, body) == (304, b"")
