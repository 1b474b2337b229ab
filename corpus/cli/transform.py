"""``corpus transform``: check, queue, and optionally wait for a transform request.

Before anything is queued (unless ``--force``): the request parses as the function parses it,
the domain exists, the selection names at least one set, and the transform version is free or
registered with the same arguments (:mod:`corpus.app.preflight`). A doomed request is one line
and exit status 1, and the queue is untouched.

``--wait`` polls the transformed sets' exact counts until they hold one output per source image;
a request the function refused (its failure row) ends the wait with its reason.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from corpus.cli.common import CliError, catalog_of, enqueue, settings_from_cwd, wait_for_progress
from corpus.cli.parsing import json_arg
from corpus.domain.errors import CorpusError


def cmd_transform(args: argparse.Namespace) -> int:
    from corpus.domain.errors import MessageError, TransformError
    from corpus.domain.messages import SourceSelector, TransformRequest
    from corpus.domain.transforms import args_json, canonical, check_request

    try:
        raw_args = json_arg(args.args, "--args") or {}
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if (args.path is None) == (not args.tag):
        raise CliError("give exactly one of --path (with --version) or --tag")
    req = TransformRequest(
        domain=args.domain,
        source=SourceSelector(path=args.path, version=args.version, tags=tuple(args.tag or ())),
        name=args.name,
        version=args.tversion,
        args=raw_args,
    )
    try:
        req = TransformRequest.parse(req.to_json())  # the same validation the function applies
        canon = canonical(req.name, req.args)
        check_request(req.name, canon)
    except (MessageError, TransformError) as exc:
        raise CliError(str(exc)) from exc
    settings = settings_from_cwd()
    clients, catalog = catalog_of(settings)
    if not args.force:
        _preflight(clients, settings, catalog, req, args_json(canon))
    sources = _sources(catalog, req) if args.wait else []
    body = req.to_json()
    message_id = enqueue(settings, settings.transform_queue, body)
    print(f"queued on {settings.transform_queue}: {body}")
    if not args.wait:
        return 0
    return _wait(catalog, settings, req, sources, message_id, args.timeout)


def _preflight(clients: Any, settings: Any, catalog: Any, req: Any, args_json: str) -> None:
    from corpus.app import preflight

    try:
        preflight.require_domain(clients, settings, req.domain, catalog)
        if req.source.path is not None:
            preflight.require_set(catalog, req.domain, req.source.path, req.source.version or "")
        else:
            preflight.require_tags(catalog, req.domain, req.source.tags, version=req.source.version)
        preflight.require_free_or_equal(catalog, req.name, req.version, args_json)
    except CorpusError as exc:
        raise CliError(f"{exc} (nothing queued; --force queues it anyway)") from None


def _sources(catalog: Any, req: Any) -> list[Any]:
    """The source sets the request selects now (the function selects the same ones)."""
    from corpus.domain.paths import SetRef
    from corpus.store.rows import dirs_of

    if req.source.path is not None:
        row = catalog.sets.get(SetRef(req.domain, dirs_of(req.source.path), req.source.version or ""))
        return [row] if row is not None else []
    return list(catalog.sets.query(req.domain, req.source.tags, version=req.source.version, originals_only=True))


def _wait(catalog: Any, settings: Any, req: Any, sources: list[Any], message_id: str, timeout: float) -> int:
    expected = sum(catalog.images.count(s.ref)[0] for s in sources)
    transform = (req.name, req.version)
    what = f"transform {req.name}:{req.version}"

    def poll() -> tuple[bool, Any]:
        for failure in catalog.failures.list(final_only=True):
            if failure.source == settings.transform_queue and failure.key == message_id:
                raise CliError(f"{what} was refused: {failure.reason.splitlines()[0] if failure.reason else ''}")
        done = sum(catalog.images.count(s.ref, transform)[0] for s in sources)
        return done >= expected, done

    wait_for_progress(poll, timeout, what)
    print(json.dumps({"transform": f"{req.name}:{req.version}", "sets": len(sources), "images": expected}))
    return 0
