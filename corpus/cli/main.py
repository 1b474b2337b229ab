"""The ``corpus`` command line: wiring only; every behaviour lives in the modules it calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corpus.cli.common import CliError, add_transfer_options, finish, settings_from_cwd
from corpus.cli.parsing import CorpusParser, add_examples, add_shared, bound_every_int, bounded_int, quiet_pipe
from corpus.domain.display import shown
from corpus.domain.errors import ConfigError, CorpusError, StorageError
from corpus.store.settings import Settings

DEFAULT_HTTP_PORT = 7071
"""Where ``func start`` serves HTTP triggers, and so ``corpus host``."""


HOST_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--until-idle", "until_idle", {"action": "store_true", "help": "exit once no work is left"}),
    ("--timeout", "idle_timeout", {"type": float, "default": None, "help": "give up after this many seconds (exit 1)"}),
    ("--blob-poll", "blob_poll_interval", {"type": float, "default": 0.5, "help": "seconds between staging scans"}),
    (
        "--lease",
        "lease_seconds",
        {"type": float, "default": 600.0, "help": "message lease (visibility) in seconds while processing (host: 600, renewed)"},
    ),
    (
        "--poison-ttl",
        "poison_ttl",
        {"type": int, "help": "time-to-live of messages this host poisons, seconds (default: the queue's, 7 days)"},
    ),
    (
        "--threads",
        "worker_threads",
        {
            "type": int,
            "help": "worker threads per process (default: PYTHON_THREADPOOL_THREAD_COUNT, else the worker's min(32, cores + 4))",
        },
    ),
    ("--deliver-twice", "deliver_twice", {"action": "store_true", "help": "testing: deliver every blob event and message twice"}),
    (
        "--drop-blob-events",
        "drop_blob_events",
        {"action": "store_true", "help": "testing: lose every blob event, as Event Grid may"},
    ),
    (
        "--timers-now",
        "timers_now",
        {"action": "store_true", "help": "run every timer trigger once at start-up, then on schedule"},
    ),
)
"""The ``corpus host`` options that are :class:`~corpus.devhost.listeners.HostOptions` fields as
given: (flag, field, argparse keywords). The parser, the options of the host and the command line
of each ``--process-per-group`` child all follow this one table."""


def _host_value(args: argparse.Namespace, flag: str) -> Any:
    return getattr(args, flag[2:].replace("-", "_"))


def _settings() -> Settings:
    return settings_from_cwd()


def cmd_host(args: argparse.Namespace) -> int:
    from corpus.devhost.supervisor import HostOptions, run_host

    app_dir = Path(args.app_dir)
    if not (app_dir / "function_app.py").is_file():
        raise CliError(f"--app-dir {shown(args.app_dir)}: no function_app.py there")

    if args.process_per_group:
        from corpus.devhost.groups import run_groups

        summary = run_groups(app_dir.resolve(), dict(_settings().values), _child_args(args), args.until_idle)
        print(json.dumps(summary), file=sys.stderr)
        if summary.get("timed_out"):
            raise CliError(f"work was still pending after --timeout {args.timeout:g}s")
        return 0
    trace = open(args.trace, "a", encoding="utf-8") if args.trace else None  # noqa: SIM115
    try:
        summary = run_host(
            HostOptions(
                app_dir=Path(args.app_dir).resolve(),
                only=tuple(args.only),
                http_port=args.port if args.port is not None else (None if args.until_idle else DEFAULT_HTTP_PORT),
                trace=trace,
                **{field: _host_value(args, flag) for flag, field, _ in HOST_OPTIONS},
            ),
            _settings(),
        )
    finally:
        if trace:
            trace.close()
    from corpus.app.progress import flush_all

    flush_all()  # the last partial batch, before the summary (the summary stays the last line)
    print(json.dumps(summary), file=sys.stderr)
    if summary.get("timed_out"):
        raise CliError(f"work was still pending after --timeout {args.timeout:g}s")
    return 0


def _child_args(args: argparse.Namespace) -> list[str]:
    """The options of one ``corpus host`` process of ``--process-per-group``."""
    out = ["--app-dir", str(Path(args.app_dir).resolve())]
    for flag, _, spec in HOST_OPTIONS:
        value = _host_value(args, flag)
        if spec.get("action") == "store_true":
            out += [flag] if value else []
        elif value is not None:
            out += [flag, str(value)]
    if args.trace:
        out += ["--trace", str(Path(args.trace).resolve())]
    if args.port is not None:
        out += ["--port", str(args.port)]
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from corpus.cli.status import collect, render

    if args.ack is not None:
        from corpus.cli.status import acknowledge

        if args.ack == "" and not args.all:
            raise CliError("give --ack ID (as corpus status prints it) or --ack --all")
        done = acknowledge(_settings(), args.ack or None)
        print(f"acknowledged {len(done)} failure(s)")
        return 0
    report = collect(_settings(), limit=args.limit, show_acknowledged=args.all)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


def _domain_arg(domain: str | None) -> None:
    """A domain given on the command line is checked like any domain: a bad one is an error, not 'no match'."""
    from corpus.domain.errors import InvalidNameError
    from corpus.domain.paths import validate_domain

    if domain is not None:
        try:
            validate_domain(domain)
        except InvalidNameError as exc:
            raise CliError(str(exc)) from exc


def cmd_sets(args: argparse.Namespace) -> int:
    from corpus.cli.queries import cmd_sets as stream_sets

    _domain_arg(args.domain)
    return stream_sets(args)


def cmd_sample(args: argparse.Namespace) -> int:
    from corpus.cli.sample import upload_sample
    from corpus.domain.errors import InvalidNameError
    from corpus.domain.paths import validate_version

    _domain_arg(args.domain)
    try:
        validate_version(args.version)
    except InvalidNameError as exc:
        raise CliError(str(exc)) from exc
    if args.count < 1:
        raise CliError("--count must be positive")
    n = upload_sample(_settings(), domain=args.domain, version=args.version, count=args.count, seed=args.seed)
    print(f"uploaded {n} sample images to staging/{args.domain}/{args.version}/")
    return 0


def cmd_transform(args: argparse.Namespace) -> int:
    from corpus.cli.transform import cmd_transform as request_transform

    return request_transform(args)


def cmd_upload(args: argparse.Namespace) -> int:
    from corpus.domain.errors import InvalidNameError
    from corpus.domain.paths import validate_domain, validate_version
    from corpus.upload.plan import parse_extensions

    only = None
    source, domain, version = args.source, args.domain, args.version
    if args.retry_from:
        from corpus.upload.report import load_retry_file, retry_paths

        try:
            data = load_retry_file(Path(args.retry_from))
        except (OSError, ValueError) as exc:
            raise CliError(f"--retry-from: {exc}") from exc
        source, domain, version = source or data["source"], domain or data["domain"], version or data["version"]
        only = retry_paths(data)
    if not source or not domain or not version:
        raise CliError("upload needs SRC, --domain and --version (or --retry-from FILE)")
    src = Path(source)
    if not src.is_dir():
        raise CliError(f"{src} is not a directory")
    try:
        validate_domain(domain)
        validate_version(version)
        extensions = parse_extensions(args.ext)
    except (InvalidNameError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if args.concurrency < 1 or (args.cap_mbps is not None and args.cap_mbps <= 0):
        raise CliError("--concurrency and --cap-mbps must be positive")
    # The first listing leaves now, before the rest of the run is imported and set up: a re-run
    # with nothing to send is mostly waiting for it (it is also the reachability check).
    from corpus.transfer.bloblist import MAX_PAGE, ListingError
    from corpus.upload.sender import RawSender, upload_client

    settings = _settings()
    client = upload_client(settings)
    client.prefetch_page(settings.staging_container, f"{domain}/{version}/", MAX_PAGE)
    from corpus.upload.report import Progress, human_summary, write_failures
    from corpus.upload.runner import Uploader, UploadOptions

    opts = UploadOptions(
        src.resolve(),
        domain,
        version,
        args.concurrency,
        args.cap_mbps,
        extensions,
        args.dry_run,
        only,
        use_cache=not args.no_cache,
    )
    uploader = Uploader(settings, opts, lister=client, sender=RawSender(client, settings.staging_container))
    progress = None if args.json else Progress(sys.stderr, uploader)
    uploader.progress = progress
    try:
        summary = uploader.run()
    except ListingError as exc:  # the first listing: nothing was decided or sent
        raise CliError(_unlisted(exc)) from None
    if progress:
        progress.render(final=True)
    return finish(summary, args.failures, args.json, write_failures, human_summary)


def _unlisted(exc: StorageError) -> str:
    """One line for a staging prefix that cannot be listed: storage down (in seconds: the
    uploader's lister does not retry a service that never answered) or refusing the request.
    That listing is the upload's first request, so it also checks that storage is reachable
    without a request of its own."""
    from corpus.store.reasons import AZURITE_HINT

    if exc.status is None:
        return f"storage is not reachable, nothing uploaded: {exc}; {AZURITE_HINT}"
    return f"storage refused to list staging, nothing uploaded: {exc}"


def _add_host(sub: Any) -> None:
    h = sub.add_parser("host", help="run the function app locally against the configured storage (development host)")
    h.add_argument("--app-dir", default=".", help="folder holding function_app.py and host.json")
    for flag, _, spec in HOST_OPTIONS:
        h.add_argument(flag, **spec)
    h.add_argument(
        "--process-per-group",
        action="store_true",
        help="run each Flex function group (each queue or timer function; all blob; all HTTP) in its own process",
    )
    h.add_argument("--only", nargs="+", default=(), metavar="FUNCTION", help="run only these functions")
    h.add_argument("--trace", help="append a JSON line per invocation (start, end, ok) to this file")
    h.add_argument(
        "--port",
        type=bounded_int(0, 65535),
        help=f"serve the HTTP triggers (API, gallery) on 127.0.0.1:PORT (default {DEFAULT_HTTP_PORT}; "
        "not served with --until-idle unless given; 0: any free port)",
    )
    h.set_defaults(func=cmd_host)


def _add_status(sub: Any) -> None:
    s = sub.add_parser("status", help="queues (with poison), staging, rejections, failures, sets")
    s.add_argument("--json", action="store_true")
    s.add_argument("--limit", type=bounded_int(1, 10_000), default=20, help="how many rejections and failures to list")
    s.add_argument("--all", action="store_true", help="acknowledged failures too (with --ack: acknowledge every failure)")
    s.add_argument("--ack", nargs="?", const="", metavar="ID", help="acknowledge a failure: kept, hidden from the default view")
    s.set_defaults(func=cmd_status)


def _add_sets(sub: Any) -> None:
    q = sub.add_parser("sets", help="list image sets")
    q.add_argument("--domain")
    q.add_argument("--tag", action="append", help="only sets carrying this tag (repeat: all of them)")
    q.add_argument("--transform", metavar="NAME[:VERSION]", help="transformed sets of this transform")
    q.add_argument("--json", action="store_true")
    q.add_argument("--limit", type=bounded_int(1, 100_000), help="at most this many sets, then a continuation token")
    q.add_argument("--continuation", metavar="TOKEN", help="continue a --limit listing where it stopped")
    add_shared(q, "--where", help="only sets holding images whose facts match, e.g. 'sharpness>=100' (docs/dedupe.md)")
    q.set_defaults(func=cmd_sets)


def _add_transform(sub: Any) -> None:
    t = sub.add_parser("transform", help="request a transform of image sets (queues a message)")
    t.add_argument("--domain", required=True)
    t.add_argument("--path", help="source set path (use <root> for the root set)")
    t.add_argument("--version", help="source set version (required with --path)")
    t.add_argument("--tag", action="append", help="select every set carrying this tag (repeat: all of them)")
    t.add_argument("--name", required=True, help="transform name, e.g. thumbnail")
    t.add_argument("--tversion", required=True, help="transform version; immutable with its arguments")
    t.add_argument("--args", help="transform arguments as JSON, e.g. '{\"size\": 256}'")
    t.add_argument("--force", action="store_true", help="queue without checking the domain, the sets and the version first")
    t.add_argument("--wait", action="store_true", help="return when every selected image is transformed (exit 0)")
    t.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most (default 600)")
    t.set_defaults(func=cmd_transform)


def _add_upload(sub: Any) -> None:
    u = sub.add_parser("upload", help="upload a folder of images to staging: throttled, verified, resumable")
    u.add_argument("source", nargs="?", metavar="SRC", help="folder whose sub-folders are tags")
    u.add_argument("--domain")
    u.add_argument("--version")
    u.add_argument("--ext", help="image extensions, comma-separated (default jpg,jpeg,png,gif,bmp,tif,tiff,webp)")
    add_transfer_options(u, "show what would be sent; send nothing", "write failures and conflicts here (JSON)")
    u.set_defaults(func=cmd_upload)


def _add_sample(sub: Any) -> None:
    g = sub.add_parser("sample", help="upload generated sample images to staging (for demos)")
    g.add_argument("--domain", default="birds")
    g.add_argument("--version", default="v1")
    g.add_argument("--count", type=bounded_int(1, 10_000), default=50)
    g.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=1)
    g.set_defaults(func=cmd_sample)


CORE_COMMANDS: dict[str, Callable[[Any], None]] = {
    "host": _add_host,
    "status": _add_status,
    "sets": _add_sets,
    "transform": _add_transform,
    "upload": _add_upload,
    "sample": _add_sample,
}
"""The commands defined in this module, in ``corpus --help`` order (the feature modules' follow)."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``corpus`` parser: every command, or with ``only`` (a command of :data:`CORE_COMMANDS`)
    that one alone. ``corpus upload`` re-runs in a fraction of a second, of which building and
    importing every other command's parser was ~10 ms: :func:`main` builds only the command
    named on the command line when it is one of these (``corpus --help``, a mistyped command or
    any other gets the whole parser, so help and "did you mean" see every command)."""
    p = CorpusParser(
        prog="corpus",
        description="Versioned image corpus on Azure Storage. 'corpus COMMAND --help' shows a command's options and examples.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = p.add_subparsers(dest="command", required=True)
    for name, add in CORE_COMMANDS.items():
        if only is None or only == name:
            add(sub)
    if only is None:
        from corpus.cli import catalog, dupes, gallery, migrate, pull, queries, reconcile, trainsets

        for feature in (reconcile, gallery, pull, queries, trainsets, catalog, dupes, migrate):
            feature.add_parsers(sub)
    _finish_parser(p)
    return p


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command of ``argv`` if it is one of :data:`CORE_COMMANDS` and comes after nothing but
    ``-v``/``--verbose``; else None (the whole parser decides)."""
    for token in argv:
        if token not in ("-v", "--verbose"):
            return token if token in CORE_COMMANDS else None
    return None


def _finish_parser(p: argparse.ArgumentParser) -> None:
    """What applies to every command, including those other modules add: bounded integers,
    examples in --help, and the transform catalogue in ``transform --help``."""
    from corpus.cli.examples import EXAMPLES, transform_catalogue

    bound_every_int(p)
    add_examples(p, EXAMPLES)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction) and isinstance(action.choices.get("transform"), CorpusParser):
            action.choices["transform"].lazy_epilog = transform_catalogue


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return quiet_pipe()  # `corpus sets | head`: the reader has what it wanted


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser(chosen_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from corpus.domain.display import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # SDK errors quote request URLs, SAS signature included
    for noisy in ("azure", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        raise
    except CliError as exc:
        return _fail(str(exc))
    except ConfigError as exc:
        return _fail(f"configuration: {exc}")
    except CorpusError as exc:
        return _fail(str(exc))
    except Exception as exc:
        # The SDK's errors are matched here, not imported at the top: the SDK is slow to load,
        # and `corpus upload` starts listing without it.
        from azure.core.exceptions import AzureError

        if not isinstance(exc, AzureError):
            raise  # a bug: keep the traceback
        return _fail(_azure_reason(exc))
    except KeyboardInterrupt:
        return 130


def _azure_reason(exc: Exception) -> str:
    from corpus.store.reasons import AZURITE_HINT, azure_reason

    return azure_reason(exc, AZURITE_HINT)


def _fail(message: str) -> int:
    print(f"corpus: error: {shown(message)}", file=sys.stderr)
    return 1


def run() -> Any:
    status = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = quiet_pipe()
    sys.exit(status)
