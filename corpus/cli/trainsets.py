"""``corpus trainset …``, ``corpus model …`` and ``corpus lineage``: training sets, models, lineage.

Every command takes ``--json``; every failure is one line on stderr and exit status 1 (raised as
:class:`~corpus.cli.main.CliError`). The work itself is in :mod:`corpus.app.trainsets`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from corpus.cli.common import CliError, wait_for_progress
from corpus.cli.common import settings_from_cwd as _settings
from corpus.cli.parsing import add_shared, finite_float, json_arg
from corpus.domain.errors import CorpusError

VERIFY_THREADS = 8
DEEP_RATE_MB = 50.0
"""``verify --deep`` default read rate, MB/s (10^6 bytes): a full re-read must not starve the account."""


def _plain(sub: Any, name: str, help: str, func: Callable[[argparse.Namespace], int], ref: str = "") -> None:
    """A subcommand whose only arguments are a ``ref`` (when its metavar is given) and ``--json``."""
    p = sub.add_parser(name, help=help)
    if ref:
        p.add_argument("ref", metavar=ref)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("trainset", help="training sets: immutable, verifiable lists of exact files")
    ts = t.add_subparsers(dest="trainset_command", required=True)

    c = ts.add_parser("create", help="request a training set (queues a message on trainset-requests)")
    c.add_argument("--name", required=True)
    c.add_argument("--version", required=True)
    c.add_argument("--domain", help="domain of the source sets")
    c.add_argument("--tag", action="append", help="every set carrying this tag (repeat: all of them)")
    c.add_argument("--path", help="one set by path (with --set-version)")
    c.add_argument("--set-version", help="the source sets' version")
    c.add_argument("--transform", metavar="NAME:VER", help="the sets of this transform instead of the originals")
    c.add_argument("--classes", help="comma-separated class tags; each image gets the one its set carries")
    c.add_argument("--split", default="100", help="TRAIN/VAL[/TEST] percentages or NAME=PCT,… (default: all train)")
    c.add_argument("--dedupe", choices=("exact", "near"), help="keep one image per exact content / per duplicate cluster")
    add_shared(c, "--where")
    c.add_argument("--from", dest="from_file", metavar="FILE", help="JSON list of sources (as in the message) instead")
    c.add_argument("--wait", action="store_true", help="return when ready (exit 0) or failed (exit 1)")
    c.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most (default 600)")
    c.add_argument("--force", action="store_true", help="queue without checking that the sources select sets")
    add_shared(c, "--stuck-after", "--json")
    c.set_defaults(func=cmd_create)

    _plain(ts, "list", "list training sets", cmd_list)
    _plain(ts, "show", "one training set: status, counts per split and label, SHA-256", cmd_show, "N:V")
    _plain(ts, "resume", "re-send a build left 'building' (its message poisoned); harmless if it runs", cmd_resume, "N:V")

    m = ts.add_parser("manifest", help="stream the manifest's JSON lines")
    m.add_argument("ref", metavar="N:V")
    m.add_argument("--split", help="only this split")
    m.add_argument("--json", action="store_true", help="(lines are JSON already)")
    m.set_defaults(func=cmd_manifest)

    v = ts.add_parser("verify", help="check every listed blob still exists with its MD5; exit 1 naming what changed")
    v.add_argument("ref", metavar="N:V")
    v.add_argument("--deep", action="store_true", help="re-read every blob and compute its MD5 (not the stored Content-MD5)")
    v.add_argument(
        "--rate",
        type=finite_float,
        default=DEEP_RATE_MB,
        metavar="MB/s",
        help="--deep reads at most this fast (default 50)",
    )
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    mo = sub.add_parser("model", help="models and the training sets they were trained on")
    ms = mo.add_subparsers(dest="model_command", required=True)
    r = ms.add_parser("register", help="register a model trained on ready training sets (immutable)")
    r.add_argument("--name", required=True)
    r.add_argument("--version", required=True)
    r.add_argument("--trainset", action="append", required=True, metavar="N:V")
    r.add_argument("--uri", default="", help="where the model is: a run, a registry entry, a file")
    r.add_argument("--metrics", help="metrics as a JSON object")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_model_register)
    _plain(ms, "list", "list models", cmd_model_list)
    _plain(ms, "show", "one model", cmd_model_show, "M:V")

    li = sub.add_parser("lineage", help="images of a model or training set, or the sets and models that used a blob")
    g = li.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", metavar="M:V")
    g.add_argument("--trainset", metavar="N:V")
    g.add_argument("--blob", metavar="CONTAINER/BLOB")
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_lineage)


def _guard(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except CorpusError as exc:
        raise CliError(str(exc)) from exc


def _rt() -> Any:
    from corpus.app.runtime import Runtime
    from corpus.store.storage import FAIL_FAST

    return Runtime.create(_settings(), profile=FAIL_FAST)


def _store(rt: Any) -> Any:
    from corpus.app.trainsets import store_of

    return store_of(rt)


def _ref(text: str, what: str = "training set") -> tuple[str, str]:
    from corpus.domain.manifest import parse_ref

    return parse_ref(text, what)


def trainset_json(row: Any) -> dict[str, Any]:
    """:func:`corpus.app.views.trainset_json`, shared with ``GET /api/trainsets`` (imported late, as all app code here)."""
    from corpus.app.views import trainset_json as shared

    return shared(row)


def _request(args: argparse.Namespace) -> Any:
    from corpus.domain.trainsets import TrainsetRequest, parse_split_arg

    if args.from_file:
        if args.domain or args.tag or args.path or args.set_version or args.transform:
            raise CliError("--from FILE replaces --domain/--tag/--path/--set-version/--transform")
        try:
            raw = json.loads(Path(args.from_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"--from {args.from_file}: {exc}") from exc
        sources = raw.get("sources") if isinstance(raw, dict) else raw
    else:
        if not args.domain:
            raise CliError("give --domain (or --from FILE)")
        if (args.path is None) == (not args.tag):
            raise CliError("give exactly one of --path (with --set-version) or --tag")
        src: dict[str, Any] = {"domain": args.domain}
        if args.path is not None:
            src["path"] = args.path
        if args.tag:
            src["tags"] = args.tag
        if args.set_version:
            src["version"] = args.set_version
        if args.transform:
            name, sep, ver = args.transform.partition(":")
            if not sep:
                raise CliError("--transform must be NAME:VERSION")
            src["transform"] = {"name": name, "version": ver}
        sources = [src]
    body: dict[str, Any] = {"trainset": {"name": args.name, "version": args.version}, "sources": sources}
    body["split"] = parse_split_arg(args.split)
    if args.dedupe:
        body["dedupe"] = args.dedupe
    if args.where:
        body["where"] = args.where
    if args.classes:
        body["labels"] = {"classes": [c.strip() for c in args.classes.split(",")]}
    return TrainsetRequest.parse(json.dumps(body))  # the same validation the function applies


def cmd_create(args: argparse.Namespace) -> int:
    def run() -> int:
        from corpus.store.trainsets_table import BUILDING, FAILED, READY

        req = _request(args)
        rt = _rt()
        store = _store(rt)
        existing = store.trainsets.get(req.name, req.version)
        if existing is not None and existing.definition != req.definition():
            raise CliError(
                f"training set {req.name}:{req.version} already exists with another definition "
                f"({existing.definition}); a training set version is immutable: use a new version"
            )
        # A failed one may be requested again with its definition: the function rebuilds it.
        send = existing is None or existing.status == FAILED
        if send and not args.force:
            _preflight(rt, req)
        if send:
            rt.send(rt.settings.trainset_queue, req.to_json())
        resumed = existing is not None and existing.status == BUILDING and _resume_if_stuck(rt, existing, args.stuck_after)
        if not args.wait:
            out = {
                "queued": send or resumed,
                "resumed": resumed,
                "name": req.name,
                "version": req.version,
                "definition": json.loads(req.definition()),
            }
            if args.json:
                print(json.dumps(out))
            elif send:
                print(f"queued on {rt.settings.trainset_queue}: {req.to_json()}")
            elif resumed:
                print(f"training set {req.name}:{req.version} was building with no progress: continuation queued")
            else:
                print(f"training set {req.name}:{req.version} exists ({existing.status}); nothing queued")
            return 0
        rebuilt = existing.attempt if existing is not None and existing.status == FAILED else None
        found: list[Any] = []

        def poll() -> tuple[bool, Any]:
            row = store.trainsets.get(req.name, req.version)
            if row is None:
                return False, None
            found[:] = [row]
            return settled(row, rebuilt), (row.status, row.attempt, row.state.images, row.etag)

        wait_for_progress(poll, args.timeout, f"training set {req.name}:{req.version}")
        row = found[0]
        _print_show(row, args.json)
        if row.status != READY:
            print(f"corpus: error: training set {req.name}:{req.version} failed: {row.reason}", file=sys.stderr)
            # always: even a first request may have met another user's failed attempt (review 27x)
            print(
                f"corpus: that was attempt {row.attempt}; a request of the same definition made at the same "
                f"time may start attempt {row.attempt + 1}: see `corpus trainset show {req.name}:{req.version}`",
                file=sys.stderr,
            )
            return 1
        return 0

    return _guard(run)


def settled(row: Any, rebuilt: int | None) -> bool:
    """Has ``create --wait`` its answer in ``row``? Not ``building``, and when the request re-requests
    a failed set (its attempt ``rebuilt``), a later attempt: the failure being rebuilt is no answer.
    By attempt, not ETag: the attempt only grows, and only the restart of a failed set grows it,
    whatever else rewrites the row. (Two users re-requesting one failure at once can't tell whose
    message started which attempt; the failure message says which attempt it reports.)"""
    from corpus.store.trainsets_table import BUILDING

    return bool(row.status != BUILDING and (rebuilt is None or row.attempt > rebuilt))


def _resume_if_stuck(rt: Any, row: Any, stuck_after: float | None) -> bool:
    """A ``building`` row with no progress for the bound (its message poisoned, issue 25 B5) is
    resumed when its definition is requested again; a build in progress is left alone."""
    from datetime import UTC, datetime, timedelta

    from corpus.app.trainsets import is_stuck, resume
    from corpus.app.trainsets import stuck_after as default_bound

    bound = default_bound(rt) if stuck_after is None else timedelta(seconds=stuck_after)
    if not is_stuck(row, datetime.now(UTC), bound):
        return False
    resume(rt, row.name, row.version)
    return True


def _preflight(rt: Any, req: Any) -> None:
    """Refuse, before queueing, a request whose sources select nothing (see :mod:`corpus.app.preflight`)."""
    from corpus.app import preflight

    try:
        for src in req.sources:
            preflight.require_domain(rt.clients, rt.settings, src.domain, rt.catalog)
            if src.transform is not None:
                preflight.require_transform(rt.catalog, *src.transform)
            if src.path is not None:
                preflight.require_set(rt.catalog, src.domain, src.path, src.version or "", src.transform)
            else:
                preflight.require_tags(rt.catalog, src.domain, src.tags, src.transform_label, src.version)
    except CorpusError as exc:
        raise CliError(f"{exc} (nothing queued; --force queues it anyway)") from None


def _print_show(row: Any, as_json: bool) -> None:
    data = trainset_json(row)
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
        return
    print(f"{row.name}:{row.version}  {row.status}{'  ' + row.reason if row.reason else ''}")
    print(f"  images   {data['images']}")
    print(f"  sha256   {data['sha256'] or '-'}")
    print(f"  manifest {data['manifest']}")
    print("  splits   " + ", ".join(f"{k} {v}" for k, v in data["splits"].items()))
    print("  labels   " + ", ".join(f"{k} {v}" for k, v in data["labels"].items()))
    print(f"  moved    {data['moved']} (put in their duplicate cluster's split, to keep clusters whole)")
    if data["skipped"]:
        print("  skipped  " + ", ".join(f"{k} {v}" for k, v in data["skipped"].items()))
        for ex in data["skipped_examples"]:
            print(f"    {ex}")


def cmd_list(args: argparse.Namespace) -> int:
    def run() -> int:
        rows = _store(_rt()).trainsets.list()
        if args.json:
            print(json.dumps([trainset_json(r) for r in rows], ensure_ascii=False))
        else:
            for r in rows:
                print(f"{r.name}:{r.version}\t{r.status}\t{r.state.images} images\t{r.sha256 or '-'}")
        return 0

    return _guard(run)


def cmd_show(args: argparse.Namespace) -> int:
    def run() -> int:
        name, version = _ref(args.ref)
        row = _store(_rt()).trainsets.get(name, version)
        if row is None:
            raise CliError(f"no training set {name}:{version}")
        _print_show(row, args.json)
        return 0

    return _guard(run)


def cmd_resume(args: argparse.Namespace) -> int:
    """Send a continuation for a ``building`` training set (see :func:`corpus.app.trainsets.resume`)."""

    def run() -> int:
        from corpus.app.trainsets import last_progress, resume
        from corpus.store.trainsets_table import BUILDING

        name, version = _ref(args.ref)
        rt = _rt()
        row = resume(rt, name, version)
        sent = row.status == BUILDING
        at = last_progress(row)
        out = {"name": name, "version": version, "status": row.status, "queued": sent, "last_progress": str(at or "")}
        if args.json:
            print(json.dumps(out))
        elif sent:
            print(f"training set {name}:{version}: continuation queued on {rt.settings.trainset_queue} (last progress {at})")
        else:
            what = "request its definition again to rebuild it" if row.status != "ready" else "nothing to resume"
            print(f"training set {name}:{version} is {row.status}: {what}")
        return 0

    return _guard(run)


def _lines(rt: Any, rows: list[Any]) -> Iterator[str]:
    from corpus.app.trainsets import manifest_lines

    for row in rows:
        yield from manifest_lines(rt, row)


def cmd_manifest(args: argparse.Namespace) -> int:
    def run() -> int:
        from corpus.app.trainsets import ready_trainset

        rt = _rt()
        row = ready_trainset(_store(rt), *_ref(args.ref))
        out = sys.stdout
        for line in _lines(rt, [row]):
            if args.split and json.loads(line)["split"] != args.split:
                continue
            out.write(line + "\n")
        return 0

    return _guard(run)


def cmd_verify(args: argparse.Namespace) -> int:
    def run() -> int:
        from corpus.app.trainsets import ready_trainset
        from corpus.transfer.pacing import RateLimiter

        if not args.rate > 0 or args.rate == float("inf"):
            raise CliError("--rate must be a positive number of MB/s")
        rt = _rt()
        row = ready_trainset(_store(rt), *_ref(args.ref))
        problems: list[dict[str, str]] = []
        checked = 0
        futures: list[Future[list[dict[str, str]]]] = []
        deep = _DeepRead(RateLimiter(args.rate * 1e6)) if args.deep else None
        with ThreadPoolExecutor(VERIFY_THREADS) as pool:
            for group in _groups(_lines(rt, [row])):
                checked += len(group[2])
                futures.append(pool.submit(_verify_group, rt, *group, deep))
                if len(futures) >= 2 * VERIFY_THREADS:
                    problems += futures.pop(0).result()
            for f in futures:
                problems += f.result()
        if args.json:
            out = {"name": row.name, "version": row.version, "checked": checked, "problems": problems}
            if deep is not None:
                out |= {"deep": True, "bytes_read": deep.bytes_read}
            print(json.dumps(out))
        else:
            for p in problems:
                print(f"{p['problem']}: {p['blob']}{' (' + p['detail'] + ')' if p.get('detail') else ''}")
        if problems:
            print(f"corpus: error: {len(problems)} of {checked} images of {row.name}:{row.version} changed", file=sys.stderr)
            return 1
        if not args.json:
            how = f", {deep.bytes_read} bytes re-read" if deep is not None else " (stored Content-MD5; --deep re-reads)"
            print(f"{row.name}:{row.version}: all {checked} images present with their MD5{how}")
        return 0

    return _guard(run)


def _groups(lines: Iterator[str]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Consecutive manifest lines of one (container, folder): a set's images are consecutive."""
    current: tuple[str, str] | None = None
    group: dict[str, str] = {}
    for line in lines:
        rec = json.loads(line)
        key = (rec["container"], rec["blob"].rsplit("/", 1)[0] + "/")
        if key != current and group and current is not None:
            yield current[0], current[1], group
            group = {}
        current = key
        group[rec["blob"]] = rec["md5"]
    if group and current is not None:
        yield current[0], current[1], group


class _DeepRead:
    """``verify --deep``: every blob's bytes are read (paced by one shared rate) and hashed here:
    the stored Content-MD5 is a property anyone with write access can set to anything, so an
    overwrite that keeps the old one passes the shallow check (issue 25 R10)."""

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter
        self.bytes_read = 0
        self._lock = threading.Lock()

    def md5_b64(self, rt: Any, container: str, name: str) -> str:
        from corpus.domain.manifest import hex_to_b64
        from corpus.store.ports import iter_ranges

        digest = hashlib.md5(usedforsecurity=False)
        for chunk in iter_ranges(rt.blobs, container, name):
            self.limiter.acquire(len(chunk))
            digest.update(chunk)
            with self._lock:
                self.bytes_read += len(chunk)
        return hex_to_b64(digest.hexdigest())


def _verify_group(
    rt: Any, container: str, prefix: str, want: dict[str, str], deep: _DeepRead | None = None
) -> list[dict[str, str]]:
    """List the folder once (List Blobs returns each blob's Content-MD5) and compare; ``deep``:
    re-read each listed blob and compare the MD5 of its bytes instead."""
    from corpus.domain.manifest import hex_to_b64
    from corpus.store.storage import blob_md5

    cc = rt.clients.container(container)
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    for b in cc.list_blobs(name_starts_with=prefix):
        if b.name not in want:
            continue
        seen.add(b.name)
        raw = b.content_settings.content_md5
        if deep is not None:
            got = deep.md5_b64(rt, container, b.name)
        elif raw:
            got = hex_to_b64(bytes(raw).hex())
        else:
            blob = cc.get_blob_client(b.name)
            got = hex_to_b64(blob_md5(blob, blob.get_blob_properties()))
        if got != want[b.name]:
            out.append(
                {"problem": "changed", "blob": f"{container}/{b.name}", "detail": f"md5 {got}, manifest says {want[b.name]}"}
            )
    for name in sorted(set(want) - seen):
        out.append({"problem": "missing", "blob": f"{container}/{name}", "detail": ""})
    return out


def cmd_model_register(args: argparse.Namespace) -> int:
    def run() -> int:
        from corpus.app.trainsets import register_model

        try:
            metrics = json_arg(args.metrics, "--metrics")
        except ValueError as exc:
            raise CliError(str(exc)) from None
        if metrics is not None and not isinstance(metrics, dict):
            raise CliError("--metrics must be a JSON object")
        sets = [_ref(t) for t in args.trainset]
        model = register_model(_store(_rt()), args.name, args.version, sets, args.uri, metrics)
        print(json.dumps(model_json(model)) if args.json else f"registered model {model.name}:{model.version}")
        return 0

    return _guard(run)


def model_json(m: Any) -> dict[str, Any]:
    """:func:`corpus.app.views.model_json`, shared with ``GET /api/models``."""
    from corpus.app.views import model_json as shared

    return shared(m)


def cmd_model_list(args: argparse.Namespace) -> int:
    def run() -> int:
        rows = _store(_rt()).models.list()
        if args.json:
            print(json.dumps([model_json(m) for m in rows]))
        else:
            for m in rows:
                print(f"{m.name}:{m.version}\t" + ",".join(f"{n}:{v}" for n, v in m.trainsets) + f"\t{m.uri}")
        return 0

    return _guard(run)


def cmd_model_show(args: argparse.Namespace) -> int:
    def run() -> int:
        name, version = _ref(args.ref, "model")
        m = _store(_rt()).models.get(name, version)
        if m is None:
            raise CliError(f"no model {name}:{version}")
        print(json.dumps(model_json(m)) if args.json else json.dumps(model_json(m), indent=2))
        return 0

    return _guard(run)


def cmd_lineage(args: argparse.Namespace) -> int:
    def run() -> int:
        from corpus.app.trainsets import lineage_of_blob, ready_trainset, trainsets_of_model

        rt = _rt()
        store = _store(rt)
        if args.blob:
            container, sep, blob = args.blob.partition("/")
            if not sep or not blob:
                raise CliError("--blob must be CONTAINER/BLOB")
            from corpus.app.preflight import require_blob

            require_blob(rt.catalog, container, blob)  # a mistyped name is not "no model used it"
            found = lineage_of_blob(rt, store, container, blob)
            if args.json:
                print(json.dumps(found))
            else:
                print("training sets: " + (", ".join(f"{t['name']}:{t['version']}" for t in found["trainsets"]) or "none"))
                print("models:        " + (", ".join(f"{m['name']}:{m['version']}" for m in found["models"]) or "none"))
            return 0
        rows = (
            trainsets_of_model(store, *_ref(args.model, "model")) if args.model else [ready_trainset(store, *_ref(args.trainset))]
        )
        for line in _lines(rt, rows):
            if args.json:
                sys.stdout.write(line + "\n")
            else:
                rec = json.loads(line)
                sys.stdout.write(f"{rec['split']}\t{','.join(rec['labels'])}\t{rec['container']}/{rec['blob']}\t{rec['md5']}\n")
        return 0

    return _guard(run)
