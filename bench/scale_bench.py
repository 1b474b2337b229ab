"""Scale runs: the real use-case code on the in-memory store (``Runtime.in_memory``), at N images.

Each size runs in its own process (so peak memory is that size's). For every path it counts the
requests the use case makes, by resource (blob verbs, queue messages, table HTTP calls and
entities per partition), the CPU time and the process's peak RSS above the phase's start
(``/proc/self/clear_refs`` resets the high-water mark per phase), and projects the Azure time
from the documented scalability targets (see docs/scale.md for the pages):

* a table partition: 2,000 entities/s; the account: 20,000 table entities/s;
* the account, all services: 20,000 requests/s (the conservative figure; primary regions state 40,000);
* a queue: 2,000 messages/s;
* bandwidth: 25 Gbps ingress, 50 Gbps egress (the conservative figures).

The projection is the time the busiest of these resources needs at its target, assuming the
clients are fast enough: a lower bound set by the storage account, not a promise.

Usage (the default run is small; 1M is an explicit flag)::

    python bench/scale_bench.py                      # 10,000 images
    python bench/scale_bench.py --sizes 10000,100000
    python bench/scale_bench.py --sizes 1000000 --decode-once   # real code at 1M: ~6 GB, ~18 min CPU
    python bench/scale_bench.py --sizes 10000000 --queries-only # the query paths at 10M rows: ~11 GB
    python bench/scale_bench.py --json out.json      # the raw figures as well
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corpus.app import ingest  # noqa: E402
from corpus.app.dispatch import queue_handlers  # noqa: E402
from corpus.app.queries import count, find_sets  # noqa: E402
from corpus.app.reconcile import reconcile  # noqa: E402
from corpus.app.runtime import Runtime  # noqa: E402
from corpus.app.trainsets import lineage_of_blob, register_model, trainsets_of_model  # noqa: E402
from corpus.domain.trainsets import TrainsetRequest  # noqa: E402
from corpus.pull.names import NameIndex  # noqa: E402
from corpus.store.memory import MemoryBlobStore, MemoryOutbox  # noqa: E402
from corpus.store.memory_tables import MemoryTables  # noqa: E402


def _commit() -> str:
    """The tree this process loaded (read at start: commits made during a long run are not its code)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "corpus", "bench"], capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


COMMIT = _commit()
PARTITION_ENTITIES_S = 2_000
ACCOUNT_TABLE_ENTITIES_S = 20_000
ACCOUNT_REQUESTS_S = 20_000
QUEUE_MESSAGES_S = 2_000
INGRESS_BPS = 25e9 / 8
EGRESS_BPS = 50e9 / 8

SET_SIZE = 1_000
CLASSES = 10
WORKERS = 16  # host.json: queues.batchSize


def jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def set_path(j: int) -> str:
    return f"c{j % CLASSES}/s{j:05d}"


# -- measuring -------------------------------------------------------------------------------


def rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Phase:
    name: str
    unit: str
    units: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    rss_start_mb: float = 0.0
    peak_above_start_mb: float = 0.0
    retained_mb: float = 0.0
    blob: dict[str, int] = field(default_factory=dict)
    blob_bytes: dict[str, int] = field(default_factory=dict)
    queue_requests: dict[str, int] = field(default_factory=dict)
    queue_sent: dict[str, int] = field(default_factory=dict)
    table_calls: int = 0
    table_entities: int = 0
    hot_partition: str = ""
    hot_entities: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    load1: float = 0.0  # the host's 1-minute load average at the phase's end (a shared box)

    @property
    def account_requests(self) -> int:
        return sum(self.blob.values()) + sum(self.queue_requests.values()) + self.table_calls

    def projection(self) -> tuple[float, str]:
        """Seconds at Azure's targets, and which target binds."""
        bounds = {
            "table partition 2,000 entities/s": self.hot_entities / PARTITION_ENTITIES_S,
            "table account 20,000 entities/s": self.table_entities / ACCOUNT_TABLE_ENTITIES_S,
            "account 20,000 requests/s": self.account_requests / ACCOUNT_REQUESTS_S,
            "queue 2,000 messages/s": max(self.queue_sent.values(), default=0) / QUEUE_MESSAGES_S,
            "ingress 25 Gbps": self.blob_bytes.get("in", 0) / INGRESS_BPS,
            "egress 50 Gbps": self.blob_bytes.get("out", 0) / EGRESS_BPS,
        }
        limit = max(bounds, key=lambda k: bounds[k])
        return bounds[limit], limit


class Meter:
    def __init__(self, rt: Runtime) -> None:
        assert isinstance(rt.blobs, MemoryBlobStore) and isinstance(rt.outbox, MemoryOutbox)
        self.blobs, self.outbox = rt.blobs, rt.outbox
        self.tables = rt.clients  # MemoryTables
        assert isinstance(self.tables, MemoryTables)
        self.phases: list[Phase] = []

    def _snap(self) -> tuple[Counter[str], ...]:
        t = self.tables
        assert isinstance(t, MemoryTables)
        return (
            Counter(self.blobs.requests),
            Counter(self.blobs.traffic),
            Counter(self.outbox.requests),
            Counter(self.outbox.sent),
            t.calls(),
            t.entities(),
        )

    @contextmanager
    def phase(self, name: str, unit: str) -> Iterator[Phase]:
        p = Phase(name, unit)
        gc.collect()
        before = self._snap()
        p.rss_start_mb = rss_kib("VmRSS") / 1024
        reset_peak()
        cpu, wall = time.process_time(), time.perf_counter()
        yield p
        p.cpu_s = time.process_time() - cpu
        p.wall_s = time.perf_counter() - wall
        p.load1 = os.getloadavg()[0]
        p.peak_above_start_mb = rss_kib("VmHWM") / 1024 - p.rss_start_mb
        gc.collect()
        p.retained_mb = rss_kib("VmRSS") / 1024 - p.rss_start_mb
        after = self._snap()
        blob, traffic, qreq, qsent, calls, ents = (a - b for a, b in zip(after, before, strict=True))
        p.blob, p.blob_bytes, p.queue_requests, p.queue_sent = dict(blob), dict(traffic), dict(qreq), dict(qsent)
        p.table_calls = sum(calls.values())
        p.table_entities = sum(ents.values())
        if ents:
            p.hot_partition, p.hot_entities = ents.most_common(1)[0]
        self.phases.append(p)
        if partial := os.environ.get("SCALE_BENCH_PARTIAL"):  # the phases so far, should a long run die
            Path(partial).write_text(json.dumps([asdict(ph) for ph in self.phases], indent=1))
        print(
            f"  {name}: {p.units:,} {unit}, cpu {p.cpu_s:.1f} s, wall {p.wall_s:.0f} s, "
            f"rss {p.rss_start_mb:.0f} MB + peak {p.peak_above_start_mb:.0f} MB, load {p.load1:.1f}",
            file=sys.stderr,
            flush=True,
        )


# -- decoding once per distinct content (--decode-once) -----------------------------------


def decode_once(data: bytes, samples: int = 200) -> dict[str, float]:
    """Compute image decode + facts once per distinct content, for runs whose images are all the
    same bytes (this bench's one JPEG), and return their measured CPU per call.

    ``inspect`` (the blob trigger's decode, hashes and quality metrics) and the transforms'
    ``facts_of`` are pure functions of the bytes: no storage request, so every count stays the real
    code's. What changes is the CPU column of the blob trigger and transform phases, which then
    leaves out ``inspect_ms`` per image and ``facts_ms`` per transformed image; both are measured
    here, on this box, unmemoised, and recorded in the run's JSON.
    """
    import io

    from PIL import Image

    from corpus.domain import images, transforms

    t = time.process_time()
    for _ in range(samples):
        images.inspect(data)
    inspect_ms = (time.process_time() - t) * 1000 / samples
    img = Image.open(io.BytesIO(data))
    img.load()
    t = time.process_time()
    for _ in range(samples):
        transforms.facts_of(img, data)
    facts_ms = (time.process_time() - t) * 1000 / samples

    inspected: dict[tuple[bytes, int, bool], images.ImageInfo] = {}
    real_inspect, real_facts = ingest.inspect, transforms.facts_of

    def inspect_once(data: bytes, max_pixels: int = images.DEFAULT_MAX_PIXELS, admit: Any = None, facts: bool = True) -> Any:
        key = (data, max_pixels, facts)
        if key not in inspected:
            inspected[key] = real_inspect(data, max_pixels, admit=admit, facts=facts)
        return inspected[key]

    faceted: dict[bytes, Any] = {}

    def facts_once(img: Any, data: bytes, stored_size: tuple[int, int] | None = None) -> Any:
        if data not in faceted:
            faceted[data] = real_facts(img, data, stored_size)
        return faceted[data]

    ingest.inspect = inspect_once  # type: ignore[assignment]
    transforms.facts_of = facts_once  # type: ignore[assignment]
    return {"inspect_ms": round(inspect_ms, 3), "facts_ms": round(facts_ms, 3), "samples": samples}


# -- the host's part: run queued messages through their use cases ----------------------------


def drain(rt: Runtime, queues: dict[str, Callable[[str], object]], workers: int = WORKERS) -> int:
    """Play the Functions host: ``workers`` invocations at once per queue (group commit then
    batches as it does in production), until every queue is empty."""
    outbox = rt.outbox
    assert isinstance(outbox, MemoryOutbox)
    ran = 0
    with ThreadPoolExecutor(workers) as pool:
        while True:
            busy = False
            for queue, handle in queues.items():
                while msgs := outbox.receive(queue, max_messages=workers * 8, visibility_timeout=3600):
                    busy = True

                    def one(m: Any, handle: Callable[[str], object] = handle, queue: str = queue) -> None:
                        handle(m.text)
                        outbox.delete(queue, m)

                    list(pool.map(one, msgs))
                    ran += len(msgs)
            if not busy:
                return ran


handlers = queue_handlers


# -- one size -------------------------------------------------------------------------------


def bookkeeping(rt: Runtime, m: Meter, n: int, sets: int, chosen: int, fill: bool = False) -> None:
    """``--rows-only``: the table side of ingest and of the transform jobs, through the same
    catalog verbs the use cases call (sets.ensure, record_images with its source markers,
    refresh_counts), in batches of 16 (what group commit forms under the host's 16 concurrent
    invocations); no blobs, no validation, no rendering.

    ``fill`` (``--queries-only``, for 10M rows on a shared box): the same verbs in batches of 96
    with one count refresh per set, a cheaper way to the same rows and counts; its phases are
    named "fill" and are not ingest figures."""
    from corpus.domain.paths import SetRef
    from corpus.domain.tags import tags_for
    from corpus.domain.transforms import canonical_json
    from corpus.store.rows import ImageRow

    refs = [SetRef("birds", tuple(set_path(j).split("/")), "v1") for j in range(sets)]
    batch = 96 if fill else WORKERS
    ingest_name = "ingest bookkeeping (rows only: sets, records + counters, count refresh; batches of 16)"
    if fill:
        ingest_name = "fill: originals (rows only: records + counters in batches of 96, one count refresh per set)"
    with m.phase(ingest_name, "images") as p:
        for j, ref in enumerate(refs):
            rt.catalog.sets.ensure(ref, tags_for(ref.dirs, rt.settings.tag_extractor), blob_prefix=ref.original_prefix())
            files = [f"{i:07d}.jpg" for i in range(j, n, sets)]
            for k in range(0, len(files), batch):
                rows = [
                    ImageRow(
                        f, ref.original_prefix() + f, 795, f"{hash(f) & (2**64 - 1):032x}", "image/jpeg", 64, 48, f"birds/v1/{f}"
                    )
                    for f in files[k : k + batch]
                ]
                rt.catalog.record_images(ref, rows)
                if not fill:
                    rt.catalog.refresh_counts(ref)
                p.units += len(rows)
            if fill:
                rt.catalog.refresh_counts(ref)
    transform = ("thumbnail", "1")
    transform_name = f"transform bookkeeping (rows only, {chosen}/{CLASSES} of the sets; batches of 16)"
    if fill:
        transform_name = f"fill: transformed (rows only, {chosen}/{CLASSES} of the sets; batches of 96)"
    with m.phase(transform_name, "transformed images") as p:
        keys = rt.catalog.transforms.register(*transform, canonical_json("thumbnail", {"size": 16}))
        for j, ref in enumerate(refs):
            if j % CLASSES >= chosen:
                continue
            rt.catalog.sets.ensure(
                ref, tags_for(ref.dirs, rt.settings.tag_extractor), ref.transform_prefix(*transform), transform, keys
            )
            originals = [image for _, image in rt.catalog.images.iter_after(ref)]
            for k in range(0, len(originals), batch):
                rows = [
                    ImageRow(o.file, ref.transform_prefix(*transform) + o.file, 300, o.md5, "image/jpeg", 16, 12, o.blob)
                    for o in originals[k : k + batch]
                ]
                rt.catalog.record_images(ref, rows, transform)
                if not fill:
                    rt.catalog.refresh_counts(ref, transform)
                p.units += len(rows)
            if fill:
                rt.catalog.refresh_counts(ref, transform)


def run(
    n: int, transform_share: float, rows_only: bool = False, once: bool = False, queries_only: bool = False
) -> dict[str, Any]:
    from corpus.store.settings import Settings

    # its phases time the blob trigger and the copy queue apart: the queued path (issue 26)
    rt = Runtime.in_memory(Settings.from_env({"CorpusStorage": "UseDevelopmentStorage=true", "CORPUS_INGEST": "queued"}))
    rt.ensure_resources()
    m = Meter(rt)
    data = jpeg()
    decode = decode_once(data) if once else {}
    s = rt.settings
    sets = max(CLASSES, n // SET_SIZE)
    names = (f"birds/v1/{set_path(i % sets)}/{i:07d}.jpg" for i in range(n))

    chosen = max(1, round(CLASSES * transform_share))
    tags = [f"c{k}" for k in range(chosen)]
    if rows_only:
        bookkeeping(rt, m, n, sets, chosen, fill=queries_only)
    else:
        with m.phase("ingest: blob trigger (validate, queue the copy)", "images") as p:
            for name in names:
                info = rt.blobs.put(s.staging_container, name, data)
                ingest.on_staged_blob(rt, ingest.StagedBlob(name, data, info.etag, {}, "BlockBlob"))
            p.units = n
        with m.phase("ingest: copy + record (group commit, 16 at once)", "images") as p:
            p.units = drain(rt, handlers(rt))

        with m.phase(f"transform fan-out + jobs ({chosen}/{CLASSES} of the sets)", "transformed images") as p:
            for tag in tags:
                body = {
                    "domain": "birds",
                    "source": {"tags": [tag], "version": "v1"},
                    "transform": {"name": "thumbnail", "version": "1", "args": {"size": 16}},
                }
                rt.send(s.transform_queue, json.dumps(body))
            drain(rt, handlers(rt))
            done = rt.catalog.sets.query("birds", (), transform="thumbnail:1")
            p.units = sum(rt.catalog.images.count(r.ref, r.transform)[0] for r in done)

    with m.phase("tag query (sets --tag c3)", "sets found") as p:
        found = list(find_sets(rt.catalog, ["birds"], ("c3",)))
        p.units = len(found)

    with m.phase("count --op thumbnail (distinct sources)", "sets counted") as p:
        c = count(rt.catalog, "birds", (), op="thumbnail")
        p.units = c.sets
        p.notes = c.as_json()

    with m.phase("count --op thumbnail --tag c0 (distinct sources)", "sets counted") as p:
        c = count(rt.catalog, "birds", ("c0",), op="thumbnail")
        p.units = c.sets
        p.notes = c.as_json()

    if queries_only:  # the table-side query paths only: no build, lineage, pull or reconcile (10M rows)
        return result(n, rows_only, decode, m)

    sources = [{"domain": "birds", "tags": [f"c{k}"], "version": "v1"} for k in range(CLASSES)]
    classes = {"classes": [f"c{k}" for k in range(CLASSES)]}  # labels: the class tags, not every set's own tag
    request = {
        "trainset": {"name": "all", "version": "1"},
        "sources": sources,
        "labels": classes,
        "split": {"train": 90, "val": 10},
    }
    with m.phase("training-set build + reverse index", "manifest lines") as p:
        rt.send(s.trainset_queue, TrainsetRequest.parse(json.dumps(request)).to_json())
        drain(rt, handlers(rt), workers=1)
        row = rt.catalog.training.trainsets.require_ready("all", "1")
        p.units = row.state.images
        p.notes = {"blocks": row.state.blocks}

    store = rt.catalog.training
    register_model(store, "m", "1", [("all", "1")])
    with m.phase("lineage --model (the model's images, streamed)", "images") as p:
        p.units = sum(1 for t in trainsets_of_model(store, "m", "1") for _ in store.entries(t.name, t.version))

    with m.phase("lineage --blob (one original)", "answers") as p:
        found_in = lineage_of_blob(rt, store, "birds", f"original/{set_path(0)}/v1/{0:07d}.jpg")
        p.units = 1
        p.notes = {"trainsets": len(found_in.get("trainsets", []))}

    with m.phase("pull planning (manifest → local names, imagefolder, two streamed passes)", "files") as p:
        names = NameIndex("imagefolder")  # what Puller.run does before its transfers
        try:
            for e in store.entries("all", "1"):
                names.add(e)
            for e in store.entries("all", "1"):
                lp = names.local_path(e)
                if lp.changed:
                    names.record(e, lp)
                p.units += 1
        finally:
            names.close()

    backlog = max(1, n // 10)
    lost = max(1, backlog // 10)
    for i in range(backlog):  # validated, their copies still queued (the copy backlog)
        name = f"birds/v2/{set_path(i % sets)}/{i:07d}.jpg"
        info = rt.blobs.put(s.staging_container, name, data)
        ingest.on_staged_blob(rt, ingest.StagedBlob(name, data, info.etag, {}, "BlockBlob"))
    for i in range(lost):  # events lost: never validated
        rt.blobs.put(s.staging_container, f"birds/v3/lost/{i:07d}.jpg", data)
    with m.phase(f"reconcile over a staged backlog ({backlog:,} queued + {lost:,} lost)", "staged blobs") as p:
        report = reconcile(rt, grace_seconds=0, max_blobs=lost)
        p.units = report.scanned
        p.notes = {"downloaded": report.downloaded, "redriven": len(report.redriven), "skipped_recent": report.skipped_recent}

    return result(n, rows_only, decode, m)


def result(n: int, rows_only: bool, decode: dict[str, float], m: Meter) -> dict[str, Any]:
    return {
        "n": n,
        "rows_only": rows_only,
        "decode_once": decode,
        # The process's peak: the highest phase peak (the high-water mark is reset per phase, so the
        # kernel's own maxrss, e.g. /usr/bin/time's, is the last phase's only).
        "peak_rss_mb": round(max((ph.rss_start_mb + ph.peak_above_start_mb for ph in m.phases), default=0.0)),
        "rss_end_mb": round(rss_kib("VmRSS") / 1024),
        "commit": COMMIT,
        "phases": [asdict(ph) | {"account_requests": ph.account_requests} for ph in m.phases],
    }


def build_memory(n: int) -> dict[str, Any]:
    """The training-set build's own memory, apart from the store's growth: image rows only (no
    blobs), then the build under ``tracemalloc``; ``transient`` = peak - what is still held at the
    end (the store's new rows and manifest), ``peak`` = peak - start (an upper bound)."""
    import tracemalloc

    from corpus.domain.paths import SetRef
    from corpus.domain.tags import tags_for
    from corpus.store.rows import ImageRow

    rt = Runtime.in_memory()
    rt.ensure_resources()
    sets = max(CLASSES, n // SET_SIZE)
    per_set = n // sets
    for j in range(sets):
        ref = SetRef("birds", tuple(set_path(j).split("/")), "v1")
        rt.catalog.sets.ensure(ref, tags_for(ref.dirs, rt.settings.tag_extractor), blob_prefix=ref.original_prefix())
        rows = [
            ImageRow(f"{i:07d}.jpg", f"{ref.original_prefix()}{i:07d}.jpg", 795, f"{i:032x}", "image/jpeg", 64, 48, "s")
            for i in range(j * per_set, (j + 1) * per_set)
        ]
        for k in range(0, len(rows), 99):
            rt.catalog.images.record_many(ref, rows[k : k + 99])
    sources = [{"domain": "birds", "tags": [f"c{k}"], "version": "v1"} for k in range(CLASSES)]
    classes = {"classes": [f"c{k}" for k in range(CLASSES)]}
    body = {"trainset": {"name": "all", "version": "1"}, "sources": sources, "labels": classes, "split": {"train": 100}}
    gc.collect()
    tracemalloc.start(1)
    start, _ = tracemalloc.get_traced_memory()
    rt.send(rt.settings.trainset_queue, TrainsetRequest.parse(json.dumps(body)).to_json())
    drain(rt, handlers(rt), workers=1)
    gc.collect()
    end, peak = tracemalloc.get_traced_memory()
    top = tracemalloc.take_snapshot().statistics("filename")[:3]
    tracemalloc.stop()
    images = rt.catalog.training.trainsets.require_ready("all", "1").state.images
    mb = 1024 * 1024
    return {
        "n": images,
        "transient_mb": round((peak - end) / mb, 1),
        "peak_above_start_mb": round((peak - start) / mb, 1),
        "retained_mb": round((end - start) / mb, 1),
        "held_at_end_by": [f"{st.traceback[0].filename.rsplit('/', 2)[-1]}: {st.size / mb:.0f} MB" for st in top],
    }


# -- the report ------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    out = [
        "| path | N | units | requests/unit (blob+queue+table calls) | table entities/unit | hottest partition: entities | "
        "CPU s (µs/unit) | peak MB above start (of which kept by the store) | Azure time at targets | binds | load |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        for ph in r["phases"]:
            p = Phase(**{k: v for k, v in ph.items() if k != "account_requests"})
            units = max(1, p.units)
            secs, limit = p.projection()
            load = f"{p.load1:.0f}" if p.load1 else "n/a"
            out.append(
                f"| {p.name} | {r['n']:,} | {p.units:,} {p.unit} | {p.account_requests / units:.2f} | "
                f"{p.table_entities / units:.2f} | `{p.hot_partition}`: {p.hot_entities:,} | "
                f"{p.cpu_s:.1f} ({p.cpu_s * 1e6 / units:,.0f}) | "
                f"{p.peak_above_start_mb:.0f} ({max(0.0, p.retained_mb):.0f}) | {fmt_time(secs)} | {limit} | {load} |"
            )
    return "\n".join(out)


def fmt_time(secs: float) -> str:
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 3600:
        return f"{secs:.1f} s"
    return f"{secs / 3600:.2f} h"


def render(paths: list[Path]) -> str:
    return table([r for path in paths for r in json.loads(path.read_text())])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000", help="comma-separated image counts (default 10000)")
    ap.add_argument("--million", action="store_true", help="add the 1,000,000-image run (~6 GB RAM)")
    ap.add_argument("--transform-share", type=float, default=0.1, help="share of the sets transformed (default 0.1)")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    ap.add_argument("--build-memory", metavar="SIZES", help="only the training-set build's own memory (tracemalloc), rows only")
    ap.add_argument(
        "--rows-only", action="store_true", help="ingest and transforms by their table writes only (for 1M on a shared box)"
    )
    ap.add_argument(
        "--decode-once",
        action="store_true",
        help="decode + facts once per distinct content (pure CPU, no requests; measured apart): for 1M real-code runs",
    )
    ap.add_argument(
        "--queries-only",
        action="store_true",
        help="rows only, then only the tag query and count --op (no build, lineage, pull, reconcile): for 10M rows",
    )
    ap.add_argument("--render", type=Path, nargs="+", metavar="JSON", help="print the table of earlier --json runs")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--one-build", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.render:
        print(render(args.render))
        return 0
    if args.build_memory:
        for n in (int(x) for x in args.build_memory.split(",")):
            cmd = [sys.executable, __file__, "--one-build", str(n)]
            print(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip())
        return 0
    if args.one_build:
        print(json.dumps(build_memory(args.one_build)))
        return 0
    if args.one:
        print(
            json.dumps(
                run(args.one, args.transform_share, args.rows_only or args.queries_only, args.decode_once, args.queries_only)
            )
        )
        return 0
    sizes = [int(x) for x in args.sizes.split(",") if x] + ([1_000_000] if args.million else [])
    results = []
    for n in sizes:
        print(f"N = {n:,}", file=sys.stderr)
        cmd = [sys.executable, __file__, "--one", str(n), "--transform-share", str(args.transform_share)]
        cmd += ["--rows-only"] if args.rows_only else []
        cmd += ["--decode-once"] if args.decode_once else []
        cmd += ["--queries-only"] if args.queries_only else []
        proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONHASHSEED": "0"})
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores", file=sys.stderr)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
