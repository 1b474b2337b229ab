"""``corpus pull`` and ``corpus export``: getting a training set out of the corpus."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from corpus.cli.common import CliError, add_transfer_options, finish, settings_from_cwd
from corpus.domain.errors import CorpusError
from corpus.store.settings import Settings


def _cli_error(message: str) -> Exception:
    return CliError(message)


def _settings() -> Settings:
    return settings_from_cwd()


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> int:
    """``500MB`` → 500,000,000; ``1GiB`` → 2**30; a bare number is bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size like 500MB or 1GiB")
    unit = (m.group(2) or "").lower().removesuffix("b")
    return int(float(m.group(1)) * _UNITS[unit])


def cmd_pull(args: argparse.Namespace) -> int:
    from corpus.domain.manifest import parse_ref
    from corpus.pull.runner import Puller, PullOptions, human_summary, load_retry, write_failures
    from corpus.pull.sources import AdHocSource, Source, TrainsetSource, source_from_json

    only = None
    dest, layout, split = args.dest, args.layout, args.split
    source: Source | None = None
    try:
        if args.retry_from:
            data, only = load_retry(Path(args.retry_from))
            source = source_from_json(data["source"])
            dest, layout, split = dest or data["dest"], data["layout"], data.get("split")
        elif args.domain:
            if args.trainset:
                raise ValueError("give a training set N:V or --domain, not both")
            if not args.set_version:
                raise ValueError("--domain needs --set-version")
            transform = None
            if args.transform:
                name, _, ver = args.transform.partition(":")
                if not name or not ver:
                    raise ValueError("--transform is NAME:VERSION")
                transform = (name, ver)
            source = AdHocSource(args.domain, args.set_version, tuple(args.tag or ()), args.path, transform)
        elif args.trainset:
            source = TrainsetSource(*parse_ref(args.trainset))
    except (OSError, ValueError, CorpusError) as exc:
        raise _cli_error(str(exc)) from exc
    if source is None or not dest:
        raise _cli_error("pull needs N:V DEST, or --domain D (--tag T | --path P) --set-version SV DEST, or --retry-from FILE")
    if args.concurrency < 1 or (args.cap_mbps is not None and args.cap_mbps <= 0):
        raise _cli_error("--concurrency and --cap-mbps must be positive")
    opts = PullOptions(
        source=source,
        dest=Path(dest).resolve(),
        layout=layout,
        split=split,
        concurrency=args.concurrency,
        cap_mbps=args.cap_mbps,
        dry_run=args.dry_run,
        only=only,
        use_cache=not args.no_cache,
    )
    puller = Puller(_settings(), opts, progress_stream=None if args.json else sys.stderr)
    try:
        summary = puller.run()
    except CorpusError as exc:
        raise _cli_error(str(exc)) from exc
    return finish(summary, args.failures, args.json, write_failures, human_summary)


def cmd_export(args: argparse.Namespace) -> int:
    from corpus.app.exports import Exports, clear_failure, export_status, list_exports
    from corpus.app.runtime import app_root, encode_message
    from corpus.domain.errors import MessageError
    from corpus.domain.exports import ExportParams, ExportRequest
    from corpus.domain.manifest import parse_ref
    from corpus.store.azure_ports import AzureBlobStore
    from corpus.store.hostconfig import load_queue_config
    from corpus.store.storage import FAIL_FAST, Clients
    from corpus.store.trainsets_table import TrainsetStore

    listing = args.trainset == "list"
    try:
        name, version = parse_ref(args.ref if listing else args.trainset)
        if args.ref and not listing:
            raise ValueError(f"unexpected argument {args.ref!r}")
        if not listing:
            if not args.format:
                raise ValueError("--format is required: webdataset, parquet or azureml")
            params = ExportParams(args.format, parse_size(args.shard_size), args.seed, args.image_format, args.datastore)
            req = ExportRequest.parse(ExportRequest(name, version, params).to_json())
    except (ValueError, MessageError) as exc:
        raise _cli_error(str(exc)) from exc
    settings = _settings()
    clients = Clients(settings.connection, FAIL_FAST)
    store = AzureBlobStore(clients)
    store.ensure_container(settings.exports_container)
    exports = Exports(store, settings.exports_container)
    if listing:
        rows = list_exports(exports, name, version)
        if args.json:
            print(json.dumps(rows, indent=2, ensure_ascii=False))
        for r in [] if args.json else rows:
            shown = " ".join(f"{k}={v}" for k, v in (r.get("params") or {}).items() if k != "format" and v is not None)
            extra = f" ({r['reason']})" if r["state"] == "failed" else ""
            extra = f" ({r['shards_done']}/{r['shards']} shards)" if r["state"] == "running" else extra
            print(f"{r['export']}  {r['state']}{extra}  {shown}  {r['location']}")
        if not rows and not args.json:
            print(f"no exports of {name}:{version}")
        return 0
    try:  # refused here, not only by the job: a manifest of a set still building is not a training set
        TrainsetStore(clients).trainsets.require_ready(name, version)
    except CorpusError as exc:
        raise _cli_error(str(exc)) from exc
    where = f"{settings.exports_container}/{req.prefix}"
    if export_status(exports, req.prefix)["state"] == "done":
        print(f"already exported: {where} (croissant.json lists its files)")
        return 0
    clear_failure(exports, req.prefix)  # a retry: --wait must not see the last run's failure
    body = req.to_json()
    encoding = load_queue_config(app_root() / "host.json").message_encoding
    clients.queue_client(settings.export_queue).send_message(encode_message(body, encoding))
    if not args.wait:
        print(f"queued on {settings.export_queue}: {body}\nresults go to {where}\n"
              f"done when {where}croissant.json exists; see `corpus export list {name}:{version}`")  # fmt: skip
        return 0
    return _wait(exports, req.prefix, where, args.timeout)


def _wait(exports: Any, prefix: str, where: str, timeout: float) -> int:
    """Poll the export's state until done (0) or failed (1, with the reason) or ``timeout``; like
    every ``--wait``, say after a while without progress that a host must be running."""
    from corpus.app.exports import export_status
    from corpus.cli.common import wait_for_progress

    last: dict[str, Any] = {}

    def poll() -> tuple[bool, Any]:
        last.update(export_status(exports, prefix))
        return last["state"] in ("done", "failed"), (last["state"], last.get("shards_done"))

    wait_for_progress(poll, timeout, f"export {where}")
    if last["state"] == "failed":
        print(f"failed: {where}: {last['reason']}", file=sys.stderr)
        return 1
    print(f"done: {where} (croissant.json lists every file)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("pull", help="download a training set (or ad-hoc sets) to a folder, verified by MD5, resumable")
    p.add_argument("trainset", nargs="?", metavar="N:V", help="training set name:version")
    p.add_argument("dest", nargs="?", metavar="DEST", help="destination folder")
    p.add_argument("--split", help="only this split (train, val, test…)")
    p.add_argument("--layout", choices=("imagefolder", "corpus"), default="imagefolder",
                   help="imagefolder: DEST/<split>/<label>/<file> (default); corpus: DEST/<container>/<blob>")  # fmt: skip
    p.add_argument("--domain", help="ad hoc: pull sets of this domain instead of a training set")
    p.add_argument("--tag", action="append", help="ad hoc: sets carrying this tag (repeat: all of them)")
    p.add_argument("--path", help="ad hoc: one set by path")
    p.add_argument("--set-version", help="ad hoc: the sets' version")
    p.add_argument("--transform", metavar="NAME:VER", help="ad hoc: the sets transformed by this transform")
    add_transfer_options(p, "count what would be downloaded; write nothing", "write failures here (JSON)")
    p.set_defaults(func=_pull_args)

    e = sub.add_parser("export", help="export a training set to blob storage as WebDataset, Parquet or Azure ML JSONL "
                       "(queued); `corpus export list N:V` lists its exports")  # fmt: skip
    e.add_argument("trainset", metavar="N:V", help="training set name:version, or `list`")
    e.add_argument("ref", nargs="?", metavar="N:V", help=argparse.SUPPRESS)
    e.add_argument("--format", choices=("webdataset", "parquet", "azureml"))
    e.add_argument("--shard-size", default="500MB", help="webdataset/parquet: bytes per shard (default 500MB)")
    e.add_argument(
        "--seed", type=int, default=0, help="webdataset/parquet: seed of the permutation that mixes shards (default 0)"
    )
    e.add_argument("--image-format", choices=("keep", "jpg", "png"), default="keep",
                   help="webdataset/parquet: keep each image's bytes (default) or re-encode all to jpg or png")  # fmt: skip
    e.add_argument("--wait", action="store_true", help="return when done (exit 0) or failed (exit 1, with the reason)")
    e.add_argument("--timeout", type=float, default=3600.0, help="--wait: give up after this many seconds (default 3600)")
    e.add_argument("--json", action="store_true", help="list: JSON")
    e.add_argument("--datastore", help="azureml: image_url as azureml://datastores/<DATASTORE>/paths/<blob>; "
                   "{container} is replaced by the image's container (default: the blob's https URL)")  # fmt: skip
    e.set_defaults(func=cmd_export)


def _pull_args(args: argparse.Namespace) -> int:
    # With --domain, the one positional given is DEST, not a training set.
    if args.domain and args.trainset and not args.dest:
        args.dest, args.trainset = args.trainset, None
    if args.retry_from and args.trainset and not args.dest:
        args.dest, args.trainset = args.trainset, None
    return cmd_pull(args)
