"""``corpus host``: a local, development-only stand-in for the Azure Functions host.

Core Tools (``func start``) is the real thing where it can be installed. This host exists so the
app can run and be tested end to end against Azurite on any machine, and it is deliberately
*faithful* rather than convenient:

* functions are discovered from ``function_app.app.get_functions()`` (trigger type, path or queue,
  connection), never from a second list; ``%SETTING%`` expressions are resolved from app settings;
* inputs are built by the azure-functions library's own converters (``BlobConverter``,
  ``QueueMessageInConverter``) from the same trigger metadata the real host sends;
* queue triggers follow ``host.json``: a batch of ``batchSize`` messages is fetched whenever the
  number in flight drops to ``newBatchThreshold`` (so at most ``batchSize + newBatchThreshold`` run
  at once), polling backs off up to ``maxPollingInterval``, a failed message becomes visible again
  after ``visibilityTimeout``, and after ``maxDequeueCount`` attempts it moves to ``<queue>-poison``;
  ``messageEncoding: base64`` bodies are decoded, and undecodable ones are poisoned;
* blob triggers (``source=EventGrid``) get each new or changed blob that matches their path
  template once, like one BlobCreated event per upload and event subscription; what was delivered
  is remembered per function in a receipts table across restarts;
* HTTP triggers are served on 127.0.0.1 (``--port``, default 7071 as ``func start``), with the
  route templates and ``extensions.http.routePrefix`` of ``host.json``; requests and responses
  pass through the library's own ``HttpRequestConverter``/``HttpResponseConverter``
  (:mod:`corpus.devhost.httpserver`);
* in-flight messages keep their lease (visibility) renewed, and a killed host's messages
  reappear after the lease expires, exactly as with the real host: 10 minutes, renewed at half;
* a message dequeued more often than ``maxDequeueCount`` is poisoned before invoking; poisoned
  messages get the queue's default time-to-live (7 days), as the host's; this host also lists them
  in its summary (``poisoned``);
* blob events become messages on the host account's one blob-trigger queue, one per function whose
  path template matches the blob, each naming its function (``FunctionId``); the queue's name holds
  the app's host id (:func:`~corpus.devhost.listeners.host_id`), so two apps never share it, and
  ``--only`` keeps all blob functions or none; one shared listener dispatches them by it with the
  blobs extension's rules (a message for a function the app does not have dropped,
  immediate re-delivery, ``poisonBlobThreshold`` attempts), with the real trigger metadata
  (``Properties.ETag`` is ``{}``);
* every invocation runs on one :class:`~corpus.devhost.listeners.Worker` per process, of
  ``PYTHON_THREADPOOL_THREAD_COUNT`` threads (else the worker's default ``min(32, cores + 4)``), and
  fails after ``functionTimeout``; ``--process-per-group`` runs each Flex function group in its
  own process, as Flex Consumption scales them.

Each of these cites its source in :mod:`corpus.devhost.listeners`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corpus.devhost.discovery import Target, discover
from corpus.devhost.listeners import (
    RECEIPTS_TABLE,
    BlobListener,
    BlobQueueListener,
    BlobRegistration,
    HostOptions,
    QueueListener,
    Stats,
    TimerListener,
    Worker,
    _Component,
    blob_trigger_queue,
    host_id,
    worker_threads,
)
from corpus.domain.errors import ConfigError
from corpus.store.hostconfig import (
    BlobConfig,
    QueueConfig,
    load_blob_config,
    load_queue_config,
    load_route_prefix,
    parse_timespan,
)
from corpus.store.settings import BLOB_POISON_QUEUE, Connection, Settings, poison_queue
from corpus.store.storage import Clients

log = logging.getLogger("corpus.host")

__all__ = ["HostOptions", "run_host"]


def run_host(opts: HostOptions, settings: Settings | None = None) -> dict[str, Any]:
    """Run every discovered function until stopped (or until idle); return the statistics."""
    settings = settings or Settings.from_env()
    deadline = time.monotonic() + opts.idle_timeout if opts.idle_timeout else None
    values = dict(settings.values)
    os.environ["AzureWebJobsScriptRoot"] = str(opts.app_dir)  # as the Functions host sets it
    targets = select(discover(opts.app_dir, values), opts.only)
    hostid = host_id(opts.app_dir, values)
    log.info("host id %s (blob-trigger queue and receipts; AzureFunctionsJobHost__id sets it)", hostid)
    worker = Worker(opts.worker_threads or worker_threads(values), load_function_timeout(opts.app_dir / "host.json"))
    cfg = load_queue_config(opts.app_dir / "host.json")
    blob_cfg = load_blob_config(opts.app_dir / "host.json")
    stats = Stats(opts.trace)
    components: list[_Component] = []

    def setup() -> None:
        host_clients = Clients(Connection.from_env(values, "AzureWebJobsStorage"))
        host_clients.ensure(tables=(RECEIPTS_TABLE,), queues=(blob_trigger_queue(hostid),))

        from corpus.app.runtime import Runtime

        Runtime.create(settings, opts.app_dir / "host.json").ensure_resources()
        _listeners(targets, values, cfg, blob_cfg, host_clients, stats, opts, components, worker, hostid)

    if not _before(deadline, setup):
        log.error("storage did not answer within --timeout %gs while starting", opts.idle_timeout or 0)
        summary = stats.summary()
        summary["timed_out"] = True
        return summary

    http = None
    if opts.http_port is not None and any(t.kind == "http" for t in targets):
        from corpus.devhost.httpserver import HttpHost

        http = HttpHost(targets, load_route_prefix(opts.app_dir / "host.json"), opts.http_port, run=worker.call)
        http.start()
        log.info("serving HTTP triggers on %s", http.url)
        print(f"corpus host: listening on {http.url}", file=sys.stderr, flush=True)

    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), name=f"listener-{i}", daemon=True) for i, c in enumerate(components)]
    for th in threads:
        th.start()
    timed_out = False
    try:
        while True:
            if opts.until_idle and _idle(components, stats):
                break
            if deadline and time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.1)  # the supervisor's own tick; listeners wait on conditions
    except KeyboardInterrupt:
        log.info("stopping: waiting for in-flight invocations")
    finally:
        stop.set()
        if http:
            http.stop()
        for th in threads:
            # After a timeout, a listener may be stuck in the SDK's retries against a dead service:
            # give in-flight work a grace period, not forever (the threads are daemons).
            th.join(STOP_GRACE_S if timed_out else None)
    worker.shutdown()
    summary = stats.summary()
    summary["timed_out"] = timed_out
    summary["worker_threads"] = worker.threads
    summary["function_timeouts"] = worker.timed_out
    return summary


def select(targets: list[Target], only: tuple[str, ...]) -> list[Target]:
    """The functions ``--only`` keeps (all of them without it).

    The app's blob functions share one blob-trigger queue, whose listener deletes a message naming
    a function it has no registration for (as the host's does, for a function removed from the
    app). A process running some of them but not the others would delete the others' messages,
    whose receipts are written: those blobs would never reach their functions. In Azure every
    instance registers every function, so this cannot happen there; here ``--only`` must keep all
    of the app's blob functions or none of them (``--process-per-group`` does: they are one Flex
    group), and a ConfigError says which are missing."""
    if not only:
        return targets
    unknown = sorted(set(only) - {t.name for t in targets})
    if unknown:
        raise ConfigError(f"--only names {', '.join(unknown)}, which the app does not have")
    blob = [t.name for t in targets if t.kind == "blob"]
    kept = [name for name in blob if name in only]
    if kept and len(kept) < len(blob):
        missing = [name for name in blob if name not in only]
        raise ConfigError(
            f"--only keeps the blob functions {', '.join(kept)} but not {', '.join(missing)}: all blob functions "
            "share one blob-trigger queue, and a process that does not run a function would delete its messages. "
            f"Add {' '.join(missing)} to --only, or leave out every blob function"
        )
    return [t for t in targets if t.name in only]


def load_function_timeout(host_json: Path) -> float | None:
    """host.json ``functionTimeout`` in seconds (None: unbounded; Flex's default is 30 minutes)."""
    import json

    try:
        data = json.loads(host_json.read_text(encoding="utf-8")) if host_json.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{host_json}: unreadable ({exc})") from exc
    value = data.get("functionTimeout") if isinstance(data, dict) else None
    if value in (None, "-1"):
        return FLEX_DEFAULT_TIMEOUT_S if value is None else None
    return parse_timespan(str(value))


FLEX_DEFAULT_TIMEOUT_S = 30 * 60.0
"""Flex Consumption's default functionTimeout (flex-consumption-plan.md, "Function app timeout")."""

STOP_GRACE_S = 10.0


def _before(deadline: float | None, fn: Callable[[], None]) -> bool:
    """Run ``fn``; with a deadline, in a daemon thread given until then. False if it did not finish."""
    if deadline is None:
        fn()
        return True
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    th = threading.Thread(target=run, name="host-setup", daemon=True)
    th.start()
    th.join(max(0.0, deadline - time.monotonic()))
    if failure:
        raise failure[0]
    return not th.is_alive()


def _listeners(
    targets: list[Target],
    values: dict[str, str],
    cfg: QueueConfig,
    blob_cfg: BlobConfig,
    host_clients: Clients,
    stats: Stats,
    opts: HostOptions,
    components: list[_Component],
    worker: Worker,
    hostid: str,
) -> None:
    """One listener per queue and timer function, its queues created first; for the blob functions,
    one event source per watched container and ONE shared blob-trigger queue listener that runs
    them all (the extension's SharedBlobQueueListener)."""
    registrations: list[BlobRegistration] = []
    watched: dict[tuple[str, str], list[Target]] = {}
    for t in targets:
        if t.kind == "http":
            continue  # served by HttpHost
        if t.kind == "timer":
            components.append(TimerListener(t, stats, opts, worker))
            log.info("scheduled: %s (timer trigger, %s)", t.name, t.source)
            continue
        clients = Clients(Connection.from_env(values, t.connection))
        if t.kind == "queue":
            clients.ensure(queues=(t.source, poison_queue(t.source)))
            components.append(QueueListener(t, clients, cfg, stats, opts, worker))
            log.info("listening: %s (queue trigger on %s, at most %d at once)", t.name, t.source, cfg.max_concurrency)
            continue
        clients.ensure(queues=(BLOB_POISON_QUEUE,))
        registrations.append(BlobRegistration.of(t, clients))
        watched.setdefault((t.connection, t.source), []).append(t)
        log.info("listening: %s (blob trigger on %s/%s, as %s)", t.name, t.source, t.path, t.function_id)
    for group in watched.values():
        clients = next(r.clients for r in registrations if r.target is group[0])
        # two rounds of invocations queued: enough work while the next listing runs
        source = BlobListener.create(
            group, clients, host_clients, stats, opts, hostid, backlog=2 * blob_cfg.max_degree_of_parallelism
        )
        source.load_receipts()
        components.append(source)
    if registrations:
        host_clients.ensure(queues=(BLOB_POISON_QUEUE,))  # the default poison queue, for a message naming no function
        components.append(BlobQueueListener(registrations, host_clients, blob_cfg, stats, opts, worker, hostid))
        log.info(
            "listening: %s (%s, at most %d blob invocations at once)",
            blob_trigger_queue(hostid),
            ", ".join(r.target.name for r in registrations),
            blob_cfg.max_degree_of_parallelism,
        )


def _idle(components: list[_Component], stats: Stats) -> bool:
    """Idle when every listener saw nothing to do after the last invocation ended, twice over."""
    if stats.busy():
        return False
    last = stats.last_activity
    marks = [c.idle_since for c in components]
    return all(m is not None and m > last for m in marks)
