"""The read-only HTTP API and the gallery, through the real ``corpus host`` on Azurite.

The data are made once per module (the tests only read): a drop ingested by the host (including a
folder named ``<img src=x onerror=alert(1)>``), a ``thumbnail`` transform of one set made by the
host, two training sets built by the host with two models registered on them, a second domain,
and a 1,000-image set whose rows and tiny blobs are written directly (it stands for a large set;
ingesting it would only slow the test down). Azurite logs every request
(``--debug``), which is how the tests count what a page read from storage.
"""

from __future__ import annotations

import json
import os
import random
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from azure.core.exceptions import ResourceNotFoundError

from corpus.app.renditions import preview_name
from corpus.app.runtime import Runtime
from corpus.cli.sample import make_image
from corpus.domain import keys
from corpus.domain.messages import SourceSelector, TransformRequest
from corpus.domain.paths import SetRef
from corpus.store.rows import ImageRow
from corpus.store.settings import Settings
from tests.support import Azurite, free_port, jpeg, png, prepare_app_dir, run_cli, run_host, serving_host, wait_for

pytestmark = pytest.mark.e2e

HOSTILE = "<img src=x onerror=alert(1)>"
ROBINS = 8
BIG = 1000


@dataclass
class World:
    base: str
    env: dict[str, str]
    cwd: Path
    rt: Runtime
    debug_log: Path

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, {k.lower(): v for k, v in res.headers.items()}, res.read()
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()

    def json(self, path: str) -> Any:
        status, headers, body = self.get(path)
        assert status == 200, body
        assert headers["content-type"].startswith("application/json")
        return json.loads(body)

    def _sentinel(self) -> tuple[int, int]:
        """Send a marker request and wait until Azurite has logged it (its log is written lazily,
        in order): everything requested before it is in the log before the returned offsets."""
        name = f"sentinel-{uuid.uuid4().hex}"
        try:
            self.rt.clients.container("sentinel").get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            pass
        needle = f"/sentinel/{name}".encode()

        def logged() -> tuple[int, int] | None:
            data = self.debug_log.read_bytes()
            at = data.find(needle)
            if at < 0:
                return None
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            return (start, end if end >= 0 else len(data))

        return tuple(wait_for(logged, 30, "Azurite to log the marker request"))  # type: ignore[return-value]

    def log_mark(self) -> int:
        return self._sentinel()[1]

    def blob_requests(self, since: int) -> list[tuple[str, str]]:
        """(method, path) of every blob request Azurite received after the mark ``since``."""
        until = self._sentinel()[0]
        with self.debug_log.open("rb") as f:
            f.seek(since)
            text = f.read(until - since).decode("utf-8", "replace")
        found = re.findall(r"BlobStorageContextMiddleware: RequestMethod=(\w+) RequestURL=(\S+)", text)
        return [(m, urlsplit(u).path) for m, u in found if "/sentinel/" not in u]


def _stage(rt: Runtime, files: dict[str, bytes]) -> None:
    staging = rt.clients.container(rt.settings.staging_container)
    for name, data in files.items():
        staging.upload_blob(name, data)


def _big_set(rt: Runtime) -> None:
    """1,000 originals and their thumbnails, as rows and tiny blobs written directly."""
    ref = SetRef("big", ("many",), "v1")
    t = ("thumbnail", "1")
    container = rt.clients.container("big")
    container.create_container()
    rt.catalog.sets.ensure(ref, ["many"], ref.original_prefix())
    rt.catalog.sets.ensure(ref, ["many"], ref.transform_prefix(*t), t, keys.transform_keys(*t))
    tiny = png(7, (4, 4))
    originals, thumbs = [], []
    for i in range(BIG):
        file = f"img{i:04d}.png"
        blob = ref.original_prefix() + file
        originals.append(ImageRow(file, blob, len(tiny), "00", "image/png", 4, 4, f"big/v1/many/{file}"))
        thumbs.append(ImageRow(file, ref.transform_prefix(*t) + file, len(tiny), "00", "image/png", 4, 4, blob))
    for start in range(0, BIG, 99):
        rt.catalog.images.record_many(ref, originals[start : start + 99])
        rt.catalog.images.record_many(ref, thumbs[start : start + 99], t)
    rt.catalog.refresh_counts(ref)
    rt.catalog.refresh_counts(ref, t)
    from azure.storage.blob import ContentSettings

    cs = ContentSettings(content_type="image/png")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda r: container.upload_blob(r.blob, tiny, content_settings=cs), originals + thumbs))


def _trainsets(rt: Runtime, env: dict[str, str], app_dir: Path) -> None:
    """Two training sets built by the host (the robins' thumbnails; the hostile-named set's
    originals) and two models registered through the public Python API."""
    from corpus import lineage
    from corpus.domain.trainsets import TrainsetRequest

    thumbs = {"domain": "birds", "path": "red/robin", "version": "v1", "transform": {"name": "thumbnail", "version": "1"}}
    for name, source in (("robins", thumbs), ("hostile", {"domain": "birds", "path": HOSTILE, "version": "v1"})):
        body = {"trainset": {"name": name, "version": "1"}, "sources": [source], "split": {"train": 100}}
        rt.send(rt.settings.trainset_queue, TrainsetRequest.parse(json.dumps(body)).to_json())
    run_host(env, app_dir)
    lineage.register_model("robin-net", "1", ["robins:1"], "runs:/robin-net/1", {"acc": 0.9}, settings=rt.settings)
    lineage.register_model("all-net", "2", ["robins:1", ("hostile", "1")], settings=rt.settings)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("gallery")
    debug_log = tmp / "azurite-debug.log"
    az = Azurite(tmp, extra_args=("--debug", str(debug_log))).start()
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CORPUS_", "CorpusStorage", "AzureWebJobsStorage"))}
        env = {
            **base,
            "CorpusStorage": az.connection_string,
            "AzureWebJobsStorage": az.connection_string,
            "PYTHONUNBUFFERED": "1",
        }
        rt = Runtime.create(Settings.from_env(env))
        rt.ensure_resources()
        app_dir = prepare_app_dir(tmp)
        _stage(
            rt,
            {
                **{f"birds/v1/red/robin/r{i}.jpg": make_image(random.Random(i), "JPEG", (320, 240)) for i in range(ROBINS)},
                **{f"birds/v1/blue/jay/j{i}.png": png(10 + i, (300, 200)) for i in range(2)},
                f"birds/v1/{HOSTILE}/h.jpg": jpeg(20),
                "birds/v1/root.jpg": jpeg(21),
                "birds/v2/red/robin/r9.jpg": jpeg(22),
                "fish/v1/reef/f.jpg": jpeg(30),
            },
        )
        run_host(env, app_dir)
        req = TransformRequest("birds", SourceSelector(path="red/robin", version="v1"), "thumbnail", "1", {"size": 160})
        rt.send(rt.settings.transform_queue, req.to_json())
        run_host(env, app_dir)
        _trainsets(rt, env, app_dir)
        _big_set(rt)
        with serving_host(env, app_dir, tmp) as url:
            yield World(url, env, tmp, rt, debug_log)
    finally:
        az.stop()


def cli_sets(w: World, *args: str) -> Any:
    proc = run_cli(w.env, w.cwd, "sets", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_an_unknown_domain_is_not_found_in_the_api_and_the_cli(world: World) -> None:
    status, _, body = world.get("/api/sets?domain=nowhere")
    assert status == 404 and "no domain 'nowhere'" in json.loads(body)["error"]
    proc = run_cli(world.env, world.cwd, "sets", "--json", "--domain", "nowhere")
    assert proc.returncode == 1 and proc.stdout == "" and "no domain 'nowhere'" in proc.stderr


@pytest.mark.parametrize(
    "query, args",
    [
        ({}, ()),
        ({"domain": "birds"}, ("--domain", "birds")),
        ({"domain": "birds", "tag": ["red", "robin"]}, ("--domain", "birds", "--tag", "red", "--tag", "robin")),
        ({"tag": HOSTILE}, ("--tag", HOSTILE)),
        ({"transform": "thumbnail:1"}, ("--transform", "thumbnail:1")),
    ],
)
def test_api_sets_equals_the_cli(world: World, query: dict[str, Any], args: tuple[str, ...]) -> None:
    api = world.json("/api/sets?" + urlencode(query, doseq=True))
    cli = cli_sets(world, *args)
    assert api["sets"] == cli
    assert api["continuation"] is None
    if not query:
        assert {(s["domain"], s["path"]) for s in cli} >= {("birds", HOSTILE), ("big", "many"), ("fish", "reef")}


@pytest.mark.parametrize(
    "query, args",
    [({}, ()), ({"domain": "birds", "tag": "red"}, ("--domain", "birds", "--tag", "red"))],  # a key range; the tag index
)
def test_paging_returns_every_set_exactly_once(world: World, query: dict[str, Any], args: tuple[str, ...]) -> None:
    seen: list[tuple[str, str, str]] = []
    token: str | None = None
    pages = 0
    while True:
        page = world.json("/api/sets?" + urlencode({**query, "limit": 1, **({"continuation": token} if token else {})}))
        assert len(page["sets"]) <= 1
        seen += [(s["domain"], s["path"], s["version"]) for s in page["sets"]]
        pages += 1
        token = page["continuation"]
        if not token:
            break
    everything = [(s["domain"], s["path"], s["version"]) for s in cli_sets(world, *args)]
    assert pages >= 2 and len(everything) >= 2
    assert seen == everything  # the CLI's order, each set once
    assert len(seen) == len(set(seen))


def test_image_paging_covers_a_large_set_exactly_once(world: World) -> None:
    files: list[str] = []
    token = None
    while True:
        q = {"path": "many", "version": "v1", "limit": 300, **({"continuation": token} if token else {})}
        page = world.json("/api/sets/big/images?" + urlencode(q))
        files += [i["file"] for i in page["images"]]
        token = page["continuation"]
        if not token:
            break
    assert len(files) == BIG == len(set(files))
    one = world.json("/api/sets/birds/images?" + urlencode({"path": "red/robin", "version": "v1"}))["images"][0]
    assert one["blob"] == "original/red/robin/v1/r0.jpg" and one["width"] == 320 and one["height"] == 240


@pytest.mark.parametrize(
    "path, status",
    [
        ("/api/sets/Not_A_Domain/images?version=v1", 400),
        ("/api/sets/birds/images?path=red/robin", 400),  # no version
        ("/api/sets/birds/images?path=nope&version=v1", 404),
        ("/api/sets?limit=0", 400),
        ("/api/sets?limit=many", 400),
        ("/api/sets?continuation=%2A%2Anot-a-token", 400),
        ("/api/sets/birds/images?version=v1&transform=thumbnail", 400),
        ("/gallery/birds/file?blob=../../etc/passwd", 400),
        ("/gallery/birds/file?blob=original/nope/v1/x.jpg", 404),
        ("/api/trainsets?limit=0", 400),
        ("/api/models?continuation=%2A%2Anot-a-token", 400),
        ("/api/trainsets/robins/%3Cx%3E", 400),
        ("/api/trainsets/nope/1", 404),
        ("/api/models/robin-net/9", 404),
        ("/api/lineage", 400),
        ("/api/lineage?blob=birds", 400),
        ("/api/lineage?blob=Not_A_Domain/original/red/robin/v1/r1.jpg", 400),
        ("/api/lineage?blob=birds/elsewhere/r1.jpg", 404),
        # The pipeline's own containers are not domains: nothing is served or rendered from them.
        ("/api/sets/staging/images?version=v1", 404),
        ("/gallery/rejected/file?blob=original/x/v1/a.jpg", 404),
        ("/gallery/staging/preview?blob=original/x/v1/a.jpg", 404),
    ],
)
def test_errors_are_json_with_a_status_never_a_trace(world: World, path: str, status: int) -> None:
    got, headers, body = world.get(path)
    assert got == status
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["status"] == status and doc["error"]
    assert b"Traceback" not in body and b'File "' not in body


def test_unknown_routes_and_methods_are_404_as_in_the_functions_host(world: World) -> None:
    assert world.get("/api/nothing")[0] == 404
    assert world.get("/api/sets", method="POST")[0] == 404
    assert world.get("/api/sets", method="HEAD")[0] == 200


class _Page(HTMLParser):
    """Collects element tags, image sources and links of a page (what a browser would build)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"] or "")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if any(k.startswith("on") for k in a):
            raise AssertionError(f"an event handler attribute reached the page: {tag} {a}")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_page(body: bytes) -> _Page:
    p = _Page()
    p.feed(body.decode("utf-8"))
    return p


def test_hostile_names_are_escaped_everywhere(world: World) -> None:
    status, headers, body = world.get("/gallery/birds")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src" not in headers["content-security-policy"] and "default-src 'none'" in headers["content-security-policy"]
    assert HOSTILE.encode() not in body
    page = parse_page(body)
    assert HOSTILE in "".join(page.text)  # shown, as text
    assert all(src.startswith("data:") or src.startswith("/") for src in page.imgs)
    set_link = next(link for link in page.links if "/set?" in link and "onerror" in link)
    status, _, body = world.get(set_link)
    assert status == 200 and HOSTILE.encode() not in body
    set_page = parse_page(body)
    assert HOSTILE in "".join(set_page.text)
    assert len(set_page.imgs) == 1  # the one image of the set, not an injected one
    status, _, body = world.get("/gallery/birds?" + urlencode({"tag": HOSTILE}))
    assert status == 200 and HOSTILE.encode() not in body and HOSTILE in "".join(parse_page(body).text)
    status, headers, body = world.get("/gallery/birds/set?" + urlencode({"path": HOSTILE, "version": "nope"}))
    assert status == 404 and headers["content-type"].startswith("text/html") and HOSTILE.encode() not in body


def test_first_grid_page_of_a_large_set_reads_only_page_size_renditions(world: World) -> None:
    mark = world.log_mark()
    status, _, body = world.get("/gallery/big/set?" + urlencode({"path": "many", "version": "v1"}))
    assert status == 200
    imgs = parse_page(body).imgs
    assert len(imgs) == 48  # the default page
    for src in imgs:
        assert parse_qs(urlsplit(src).query)["blob"][0].startswith("transform/thumbnail/1/many/v1/")
        got, headers, data = world.get(src)
        assert got == 200 and headers["content-type"] == "image/png" and data.startswith(b"\x89PNG")
        assert headers["etag"] and "max-age" in headers["cache-control"]
    # Only the domain's container: the host's staging scan polls on its own schedule.
    big = [(m, p) for m, p in world.blob_requests(mark) if p.startswith("/corpustest/big/")]
    assert not [p for _, p in big if "/original/" in p], "the grid read an original"
    assert len([p for m, p in big if m == "GET" and "/transform/" in p]) <= 48
    assert len(big) <= 48  # and nothing else: the page itself reads only tables


def test_a_preview_is_made_once_cached_and_revalidated(world: World) -> None:
    status, _, body = world.get("/gallery/birds/set?" + urlencode({"path": "blue/jay", "version": "v1"}))
    assert status == 200
    imgs = parse_page(body).imgs
    assert len(imgs) == 2 and all("/gallery/birds/preview?" in s for s in imgs)
    first = world.log_mark()
    got, headers, data = world.get(imgs[0])
    assert got == 200 and headers["content-type"] == "image/png" and data.startswith(b"\x89PNG")
    source = parse_qs(urlsplit(imgs[0]).query)["blob"][0]
    assert ("GET", f"/corpustest/birds/{source}") in world.blob_requests(first)  # made from the original, once
    stored = world.rt.clients.container("birds").get_blob_client(preview_name(source)).get_blob_properties()
    assert stored.size == len(data)
    second = world.log_mark()
    again, headers2, data2 = world.get(imgs[0])
    assert again == 200 and data2 == data and headers2["etag"] == headers["etag"]
    reads = [(m, p) for m, p in world.blob_requests(second) if p.startswith("/corpustest/birds/")]
    assert [m for m, p in reads] == ["GET"] and "/preview/256/" in reads[0][1]  # the preview only, not the original
    not_modified, headers3, body3 = world.get(imgs[0], {"If-None-Match": headers["etag"]})
    assert not_modified == 304 and body3 == b"" and headers3["etag"] == headers["etag"]


def test_image_page_shows_its_transforms_side_by_side(world: World) -> None:
    status, _, body = world.get("/gallery/birds/image?" + urlencode({"blob": "original/red/robin/v1/r1.jpg"}))
    assert status == 200
    page = parse_page(body)
    text = "".join(page.text)
    assert "r1.jpg" in text and "320 x 240" in text and "thumbnail:1" in text
    assert any("blob=transform%2Fthumbnail%2F1%2Fred%2Frobin%2Fv1%2Fr1.jpg" in s for s in page.imgs)
    for src in page.imgs:
        if src.startswith("/"):
            assert world.get(src)[0] == 200


def cli_json(w: World, *args: str) -> Any:
    proc = run_cli(w.env, w.cwd, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_trainsets_models_and_lineage_equal_the_cli(world: World) -> None:
    original, thumb = "birds/original/red/robin/v1/r1.jpg", "birds/transform/thumbnail/1/red/robin/v1/r1.jpg"
    unused = "birds/original/v1/root.jpg"
    queries = {
        "/api/trainsets": ("trainset", "list"),
        "/api/trainsets/robins/1": ("trainset", "show", "robins:1"),
        "/api/trainsets/hostile/1": ("trainset", "show", "hostile:1"),
        "/api/models": ("model", "list"),
        "/api/models/robin-net/1": ("model", "show", "robin-net:1"),
        **{"/api/lineage?" + urlencode({"blob": b}): ("lineage", "--blob", b) for b in (original, thumb, unused)},
    }
    with ThreadPoolExecutor(4) as pool:  # each CLI run is a Python start-up: overlap them
        cli = dict(zip(queries, pool.map(lambda args: cli_json(world, *args), queries.values()), strict=True))
    api = {path: world.json(path) for path in queries}
    assert api["/api/trainsets"] == {"trainsets": cli["/api/trainsets"], "continuation": None}
    assert api["/api/models"] == {"models": cli["/api/models"], "continuation": None}
    for path in queries:
        if path not in ("/api/trainsets", "/api/models"):
            assert api[path] == cli[path], path
    robins = api["/api/trainsets/robins/1"]
    assert (robins["status"], robins["images"]) == ("ready", ROBINS)
    assert [t["name"] for t in api["/api/trainsets"]["trainsets"]] == ["hostile", "robins"]
    assert api["/api/models/robin-net/1"]["metrics"] == {"acc": 0.9}
    # The original trained through its thumbnail; the thumbnail itself; an image no set lists.
    both = [{"name": "all-net", "version": "2"}, {"name": "robin-net", "version": "1"}]
    assert api[f"/api/lineage?{urlencode({'blob': original})}"] == {
        "trainsets": [{"name": "robins", "version": "1"}],
        "models": both,
    }
    assert api[f"/api/lineage?{urlencode({'blob': thumb})}"]["models"] == both
    assert api[f"/api/lineage?{urlencode({'blob': unused})}"] == {"trainsets": [], "models": []}


@pytest.mark.parametrize("kind", ["trainsets", "models"])
def test_trainset_and_model_paging_returns_each_once_in_the_cli_order(world: World, kind: str) -> None:
    seen: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = world.json(f"/api/{kind}?" + urlencode({"limit": 1, **({"continuation": token} if token else {})}))
        assert len(page[kind]) <= 1
        seen += page[kind]
        token = page["continuation"]
        if not token:
            break
    assert seen == world.json(f"/api/{kind}")[kind] and len(seen) == 2


def test_image_page_names_the_training_sets_and_models_that_used_it(world: World) -> None:
    status, _, body = world.get("/gallery/birds/image?" + urlencode({"blob": "original/red/robin/v1/r1.jpg"}))
    assert status == 200
    page = parse_page(body)
    text = "".join(page.text)
    assert "robins:1" in text and "robin-net:1" in text and "all-net:2" in text and "hostile:1" not in text
    assert {"/api/trainsets/robins/1", "/api/models/robin-net/1", "/api/models/all-net/2"} <= set(page.links)
    # The hostile-named set's image: used by its own training set, its folder shown as text only.
    hostile = world.json("/api/sets/birds/images?" + urlencode({"path": HOSTILE, "version": "v1"}))["images"][0]["blob"]
    status, _, body = world.get("/gallery/birds/image?" + urlencode({"blob": hostile}))
    assert status == 200 and HOSTILE.encode() not in body
    page = parse_page(body)
    text = "".join(page.text)
    assert HOSTILE in text and "hostile:1" in text and "all-net:2" in text and "robin-net:1" not in text
    status, _, body = world.get("/gallery/birds/image?" + urlencode({"blob": "original/v1/root.jpg"}))
    assert status == 200 and "No ready training set lists this image" in "".join(parse_page(body).text)


CHROMIUM = Path(os.environ.get("CORPUS_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CORPUS_CHROMEDRIVER", "/usr/bin/chromedriver"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium (Debian's ``chromium`` and ``chromium-driver``), driven by selenium.

    Skipped where they are not installed, except in CI (``CORPUS_REQUIRE_BROWSER=1``), where it fails.
    """
    missing = None
    try:
        from selenium import webdriver
    except ImportError:
        missing = "selenium (the dev extra)"
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        missing = f"{CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
    if missing:
        if os.environ.get("CORPUS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test needs {missing}")
        pytest.skip(f"the browser test needs {missing}")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _images_rendered(driver: Any) -> list[dict[str, Any]]:
    """Every <img> once all have finished loading (complete), with their natural width."""

    def done() -> Any:
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.src, complete: i.complete, width: i.naturalWidth}))"
        )
        return imgs if imgs and all(i["complete"] for i in imgs) else None

    return list(wait_for(done, 30, "the page's images to finish loading"))


def test_the_gallery_in_headless_chromium(world: World, browser: Any, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    browser.get(world.base + "/gallery")
    browser.find_element(By.LINK_TEXT, "birds").click()
    # Filter by a tag, as a user would: type it, submit.
    browser.find_element(By.ID, "tag").send_keys("robin")
    browser.find_element(By.ID, "filter").click()
    wait_for(lambda: "tag=robin" in browser.current_url, 10, "the filtered page")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.set")
    assert [r.find_element(By.CLASS_NAME, "set-link").text for r in rows] == ["red/robin", "red/robin"]  # v1 and v2
    assert all("robin" in r.text for r in rows)
    rows[0].find_element(By.CLASS_NAME, "set-link").click()
    wait_for(lambda: "/set?" in browser.current_url, 10, "the set page")
    assert browser.find_element(By.ID, "set-name").text.startswith("red/robin")
    imgs = _images_rendered(browser)
    assert len(imgs) == ROBINS and all(i["width"] > 0 for i in imgs), imgs
    assert all("/gallery/birds/file?blob=transform%2Fthumbnail" in i["src"] for i in imgs)  # the thumbnail transform
    shot = Path(os.environ.get("CORPUS_GALLERY_SCREENSHOT") or tmp_path / "gallery.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000

    # One image: its preview and its thumbnail side by side.
    browser.find_element(By.CSS_SELECTOR, "#grid figure a").click()
    wait_for(lambda: "/image?" in browser.current_url, 10, "the image page")
    shown = _images_rendered(browser)
    assert len(shown) == 2 and all(i["width"] > 0 for i in shown), shown
    assert "thumbnail:1" in browser.find_element(By.TAG_NAME, "main").text

    # A set without thumbnails: previews, made on first request, render too.
    browser.get(world.base + "/gallery/birds/set?" + urlencode({"path": "blue/jay", "version": "v1"}))
    assert all(i["width"] > 0 for i in _images_rendered(browser))

    # The hostile-named set: its name is text, no element was injected, nothing ran.
    browser.get(world.base + "/gallery/birds")
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "onerror")
    assert link.text == HOSTILE
    link.click()
    wait_for(lambda: "/set?" in browser.current_url, 10, "the hostile set's page")
    assert browser.find_element(By.ID, "set-name").text.startswith(HOSTILE)
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], img[onerror]').length") == 0
    assert all(i["width"] > 0 for i in _images_rendered(browser))
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check that no alert opened

    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []


def test_corpus_gallery_prints_the_url_of_a_running_host(world: World) -> None:
    port = urlsplit(world.base).port
    proc = run_cli(world.env, world.cwd, "gallery", "--port", str(port))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"http://127.0.0.1:{port}/gallery"
    nothing = run_cli(world.env, world.cwd, "gallery", "--port", str(free_port()))
    assert nothing.returncode == 1 and "corpus host" in nothing.stderr


# -- Training-set and model pages, sizes, paging both ways, versions (issue 23). Last in this module:
# the version test adds an image to the world.


def test_trainset_and_model_pages_show_counts_samples_and_metrics(world: World) -> None:
    status, _, body = world.get("/gallery/-/trainsets")
    assert status == 200
    page = parse_page(body)
    assert {"/gallery/-/trainsets/robins/1", "/gallery/-/trainsets/hostile/1"} <= set(page.links)

    shown = cli_json(world, "trainset", "show", "robins:1")
    status, _, body = world.get("/gallery/-/trainsets/robins/1")
    assert status == 200
    page = parse_page(body)
    text = " ".join(t.strip() for t in page.text if t.strip())
    for label, n in shown["labels"].items():  # one split (train): each label's row is "label n n"
        assert f"{label} {n} {n}" in text, (label, n, text)
    assert len(page.imgs) == min(ROBINS, 6) * len(shown["labels"])  # a sample grid per label
    assert all(src.startswith("/gallery/birds/file?") for src in page.imgs)  # thumbnails, served as they are
    assert {"/gallery/-/models/robin-net/1", "/gallery/-/models/all-net/2"} <= set(page.links)

    status, _, body = world.get("/gallery/-/trainsets/hostile/1")
    assert status == 200 and HOSTILE.encode() not in body and HOSTILE in "".join(parse_page(body).text)

    status, _, body = world.get("/gallery/-/models/robin-net/1")
    page = parse_page(body)
    text = " ".join(t.strip() for t in page.text if t.strip())
    assert status == 200 and "acc 0.9" in text and "runs:/robin-net/1" in text
    assert "/gallery/-/trainsets/robins/1" in page.links and not any(link.startswith("runs:") for link in page.links)
    status, _, body = world.get("/gallery/-/models")
    assert status == 200 and "/gallery/-/models/all-net/2" in parse_page(body).links
    assert world.get("/gallery/-/models/nope/1")[0] == 404 and world.get("/gallery/-/trainsets/nope/1")[0] == 404


def test_grid_pages_go_forward_and_back_and_sizes_read_as_people_read_them(world: World) -> None:
    def grid(path: str) -> _Page:
        status, _, body = world.get(path)
        assert status == 200
        return parse_page(body)

    first = grid("/gallery/big/set?" + urlencode({"path": "many", "version": "v1", "limit": "10"}))
    assert re.search(r"1000 images, \d+\.\d KiB\.", "".join(first.text))
    nexts = [h for h in first.links if "continuation=" in h]
    assert len(nexts) == 1  # page 1: only "next"
    second = grid(nexts[0])
    third = grid(next(h for h in second.links if "continuation=" in h and h.count("back=") == 2))
    back_links = [h for h in third.links if "/set?" in h]
    # third page: first, previous (= the second page), next
    previous = [h for h in back_links if h.count("back=") == 1 and "continuation=" in h]
    assert len(previous) == 1 and grid(previous[0]).imgs == second.imgs
    first_again = [h for h in back_links if "continuation=" not in h]
    assert len(first_again) == 1 and grid(first_again[0]).imgs == first.imgs
    assert second.imgs != third.imgs and second.imgs != first.imgs


def test_an_image_page_links_the_same_file_in_other_versions(world: World) -> None:
    staging = world.rt.clients.container(world.rt.settings.staging_container)
    staging.upload_blob("birds/v2/red/robin/r1.jpg", jpeg(99))
    v2 = "original/red/robin/v2/r1.jpg"

    def linked() -> bool:
        status, _, body = world.get("/gallery/birds/image?" + urlencode({"blob": "original/red/robin/v1/r1.jpg"}))
        return status == 200 and ("/gallery/birds/image?" + urlencode({"blob": v2})) in parse_page(body).links

    wait_for(linked, 60, "the running host to ingest r1.jpg v2 and the v1 page to link it")
    status, _, body = world.get("/gallery/birds/image?" + urlencode({"blob": v2}))
    page = parse_page(body)
    assert status == 200 and "/gallery/birds/image?" + urlencode({"blob": "original/red/robin/v1/r1.jpg"}) in page.links
    assert re.search(r"\d+\.\d KiB \([\d,]+ bytes\)", "".join(page.text))
