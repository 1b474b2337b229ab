"""The trigger listeners of ``corpus host``: queue triggers with the Functions host's batching,
lease, retry and poison semantics, and ``source=EventGrid`` blob triggers with one delivery per
new or changed blob, remembered across restarts. Inputs are built by the azure-functions library's
own converters from the same trigger metadata the real host sends.

Sources of the behaviours copied here (Azure/azure-sdk-for-net, the Storage extensions of the
Functions host; paths under ``sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Common/src/Shared``):

* ``Queues/QueueListener.cs`` (constructor: ``_visibilityTimeout = TimeSpan.FromMinutes(10)``;
  ``CreateUpdateMessageVisibilityTimer``: renewed when half of it has passed): 10-minute leases;
* ``Queues/QueueProcessor.cs`` (``BeginProcessingMessageAsync``: ``DequeueCount >
  MaxDequeueCount`` goes to the poison queue without invoking; ``CompleteProcessingMessageAsync``;
  ``CopyMessageToPoisonQueueAsync``: ``AddMessageAndCreateIfNotExistsAsync(message.Body)``, no
  time-to-live, so the service default of 7 days applies);
* ``Microsoft.Azure.WebJobs.Extensions.Storage.Blobs/src/Listeners/SharedBlobQueueListenerFactory.cs``
  (``BlobsOptionsToQueuesOptions``: the blob trigger's invocations go through a host-account queue
  with ``batchSize = maxDegreeOfParallelism / 2 + 1``, ``newBatchThreshold`` the rest, and the
  default ``VisibilityTimeout`` of zero: a failed blob is re-delivered at once, up to
  ``poisonBlobThreshold`` times, then poisoned into ``webjobs-blobtrigger-poison`` of the blob's
  account (``SharedBlobQueueProcessor.GetPoisonQueue``));
* ``…Storage.Blobs/src/Listeners/BlobListenerFactory.cs`` and ``BlobQueueTriggerExecutor.cs``: one
  shared listener for the host's blob-trigger queue, each message dispatched to the function its
  ``FunctionId`` names (unknown: logged and completed without invoking); ``Config/
  BlobsExtensionConfigProvider.cs`` (``ProcessEventsAsync``): each Event Grid subscription's
  events become messages naming its function.

The Python worker runs the functions (azure-functions-python-worker,
``azure_functions_worker/dispatcher.py``: ``_get_sync_tp_max_workers`` and ``_create_sync_call_tp``):
synchronous functions on one ``ThreadPoolExecutor`` per worker process, of
``PYTHON_THREADPOOL_THREAD_COUNT`` threads, or, unset, Python's default ``min(32, cores + 4)``.
:class:`Worker` does the same, so the host may dispatch 24 while only N run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import platform
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode
from azure.functions import meta
from azure.functions.blob import BlobConverter
from azure.functions.queue import QueueMessageInConverter
from azure.functions.timer import TimerRequestConverter

from corpus.devhost.discovery import NamePattern, Target, blob_name_pattern
from corpus.domain import cron, keys
from corpus.domain.errors import ConfigError, StorageError
from corpus.store.hostconfig import BlobConfig, QueueConfig
from corpus.store.settings import BLOB_POISON_QUEUE, POISON_SUFFIX, poison_queue
from corpus.store.storage import Clients, blob_request
from corpus.transfer.bloblist import BlobLister

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

log = logging.getLogger("corpus.host")

RECEIPTS_TABLE = "DevHostBlobReceipts"
EVENT_CHUNK = 100  # receipts per entity-group transaction (Azure's limit)
LISTING_PACE = 4.0
"""The wait after a listing is at least this many times as long as the listing itself took (its
pages, not the events sent from it): a large staging container is not listed back to back."""
EVENT_SENDERS = 8  # blob-trigger messages queued at once, as the extension enqueues a batch of events


def _bare(etag: str) -> str:
    """Listings return ETags bare, reads return them quoted: compare them bare."""
    return etag.strip('"')


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat() if dt else None


class Stats:
    """Counters and the in-flight gauge per function; optionally a JSON-lines trace of invocations."""

    def __init__(self, trace: TextIO | None) -> None:
        self._lock = threading.Lock()
        self._trace = trace
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.ok: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.poisoned_messages: list[dict[str, str]] = []
        self.dropped_messages: list[dict[str, str]] = []
        self.last_activity = time.monotonic()

    def start(self, fn: str) -> float:
        with self._lock:
            n = self.in_flight.get(fn, 0) + 1
            self.in_flight[fn] = n
            self.max_in_flight[fn] = max(n, self.max_in_flight.get(fn, 0))
            self.last_activity = time.monotonic()
        return time.time()

    def end(self, fn: str, started: float, ok: bool, key: str) -> None:
        ended = time.time()
        with self._lock:
            self.in_flight[fn] -= 1
            (self.ok if ok else self.failed)[fn] = (self.ok if ok else self.failed).get(fn, 0) + 1
            self.last_activity = time.monotonic()
            if self._trace:
                self._trace.write(json.dumps({"fn": fn, "start": started, "end": ended, "ok": ok, "key": key}) + "\n")
                self._trace.flush()

    def poisoned(self, fn: str, message_id: str, queue: str, why: str) -> None:
        """Record a message this host poisoned (the host's poison messages expire; this list does not)."""
        with self._lock:
            self.poisoned_messages.append({"fn": fn, "message_id": message_id, "queue": queue, "why": why})

    def dropped(self, function_id: str, message_id: str, blob: str, why: str) -> None:
        """Record a message completed without invoking anything because it names no function here."""
        with self._lock:
            self.dropped_messages.append({"function_id": function_id, "message_id": message_id, "blob": blob, "why": why})

    def busy(self) -> bool:
        with self._lock:
            return any(self.in_flight.values())

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ok": dict(self.ok),
                "failed": dict(self.failed),
                "max_in_flight": dict(self.max_in_flight),
                "poisoned": list(self.poisoned_messages),
                "dropped": list(self.dropped_messages),
            }


def worker_default_threads() -> int:
    """The Python worker's pool when PYTHON_THREADPOOL_THREAD_COUNT is unset: ``max_workers=None``,
    which ``concurrent.futures.ThreadPoolExecutor`` turns into ``min(32, os.cpu_count() + 4)``."""
    return min(32, (os.cpu_count() or 1) + 4)


def worker_threads(values: dict[str, str] | Any) -> int:
    """``PYTHON_THREADPOOL_THREAD_COUNT`` as the worker reads it (an integer >= 1), else its default."""
    raw = str(values.get("PYTHON_THREADPOOL_THREAD_COUNT", "") or "").strip()
    try:
        n = int(raw)
    except ValueError:
        return worker_default_threads()
    return n if n >= 1 else worker_default_threads()


class Worker:
    """The Python worker of one process: every invocation runs on one pool of ``threads`` threads.

    ``function_timeout`` (host.json ``functionTimeout``) is counted from dispatch, as the host
    counts it, so time spent waiting for a worker thread counts too. A timed-out invocation is a
    failure (its message is retried or poisoned as usual); the real host then restarts the worker
    process, which no thread can be made to do here: the thread is abandoned (and logged).
    """

    def __init__(self, threads: int, function_timeout: float | None = None) -> None:
        self.threads = threads
        self.function_timeout = function_timeout
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="worker")
        self.timed_out = 0

    def invoke(self, target: Target, stats: Stats, arg: Any, key: str, what: str) -> bool:
        """Call one function with its bound input, as the host does: count it, log a failure, never raise."""
        future: Future[bool] = self.pool.submit(self._run, target, stats, arg, key, what)
        try:
            return future.result(timeout=self.function_timeout)
        except FutureTimeout:
            self.timed_out += 1
            log.error(
                "%s timed out on %s after functionTimeout %gs: a failure (the real host restarts the worker now)",
                target.name,
                what,
                self.function_timeout or 0,
            )
            return False

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on a worker thread and return its result (HTTP triggers); TimeoutError after functionTimeout."""
        future = self.pool.submit(fn)
        try:
            return future.result(timeout=self.function_timeout)
        except FutureTimeout:
            self.timed_out += 1
            raise TimeoutError(f"functionTimeout {self.function_timeout:g}s") from None

    @staticmethod
    def _run(target: Target, stats: Stats, arg: Any, key: str, what: str) -> bool:
        started = stats.start(target.name)
        ok = False
        try:
            target.call(**{target.arg_name: arg})
            ok = True
        except Exception as exc:  # noqa: BLE001 - the function's failure is the host's to handle
            log.warning("%s failed on %s: %s", target.name, what, exc)
        finally:
            stats.end(target.name, started, ok, key)
        return ok

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


HOST_LEASE_SECONDS = 600.0
"""QueueListener.cs: ``_visibilityTimeout = TimeSpan.FromMinutes(10)``, renewed at half."""

POISON_TTL_DEFAULT: int | None = None
"""QueueProcessor.CopyMessageToPoisonQueueAsync sends no time-to-live: the queue service's default
(7 days) applies, after which a host-poisoned message is gone. The app keeps the evidence: the
failure reporter records every attempt, the last one marked final, in the Failures table, and each
poison queue's recorder function (``corpus.app.failures.record_poisoned``, served like any queue
trigger) turns what the host poisoned on its own into a final row."""

HOST_ID_SETTING = "AzureFunctionsJobHost__id"
"""The app setting that names the host id (``ConfigurationSectionNames.HostIdPath``,
``AzureFunctionsJobHost:id``), as the host reads it; unset, the id is derived from the app."""
MAX_HOST_ID = 32  # ScriptConstants.MaximumHostIdLength
_HOST_ID = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,31}")


def host_id(app_dir: Path, values: dict[str, str] | Any) -> str:
    """The host id of the app in ``app_dir``: what names its blob-trigger queue and its receipts,
    so that two apps on one storage account never take each other's messages.

    As the Functions host (``ScriptHostIdProvider.GetDefaultHostId``) when it runs outside App
    Service: the machine name's letters and digits, ``-``, and a stable hash of the app's root
    path, lower-cased, at most 32 characters. The host truncates the whole, which can cut the hash
    off a long machine name and give two folders one id; here the machine name is cut instead, so
    the hash (of the canonical path: a symlink or ``..`` is the same app) always survives.
    ``AzureFunctionsJobHost__id`` overrides it, as in the host; it must be 1-32 lower-case letters,
    digits and single dashes, neither first nor last (a valid part of a queue name)."""
    configured = str(values.get(HOST_ID_SETTING, "") or "").strip()
    if configured:
        if not _HOST_ID.fullmatch(configured):
            raise ConfigError(
                f"{HOST_ID_SETTING}={configured[:80]!r}: a host id is 1-{MAX_HOST_ID} lower-case letters, "
                "digits and single dashes, not first or last"
            )
        return configured
    digest = hashlib.sha256(str(Path(app_dir).resolve()).encode("utf-8")).digest()
    suffix = str(int.from_bytes(digest[:4], "big") & 0x7FFFFFFF)  # as Math.Abs of a 32-bit hash: up to 10 digits
    machine = "".join(c for c in platform.node().lower() if c.isascii() and c.isalnum()) or "host"
    return f"{machine[: MAX_HOST_ID - 1 - len(suffix)]}-{suffix}"


def blob_trigger_queue(hostid: str) -> str:
    """HostQueueNames.GetHostBlobTriggerQueueName(hostId): the host's blob-trigger queue, in its account."""
    return f"azure-webjobs-blobtrigger-{hostid}"


@dataclass
class HostOptions:
    app_dir: Path
    until_idle: bool = False
    idle_timeout: float | None = None
    blob_poll_interval: float = 0.5
    lease_seconds: float = HOST_LEASE_SECONDS
    poison_ttl: int | None = POISON_TTL_DEFAULT  # seconds; None: the queue's default (7 days), as the host
    worker_threads: int | None = None  # None: PYTHON_THREADPOOL_THREAD_COUNT, else the worker's default
    only: tuple[str, ...] = ()  # run only these functions (one function group per process); empty: all
    deliver_twice: bool = False
    trace: TextIO | None = None
    drop_blob_events: bool = False  # testing: lose every blob event, as Event Grid sometimes does
    timers_now: bool = False  # run every timer trigger once at start-up, then on its schedule
    http_port: int | None = None  # serve the HTTP triggers on 127.0.0.1:<port> (0: any free port); None: not at all


class _Component:
    """A trigger listener. ``idle_since``: start of its latest look that found nothing to do, else None."""

    idle_since: float | None = None

    def run(self, stop: threading.Event) -> None:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class _Lease:
    message_id: str
    pop_receipt: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False


class QueueListener(_Component):
    """One queue trigger, run with the Functions host's batching, retry and poison semantics."""

    def __init__(
        self, target: Target, clients: Clients, cfg: QueueConfig, stats: Stats, opts: HostOptions, worker: Worker
    ) -> None:
        self.t, self.cfg, self.stats, self.opts, self.worker = target, cfg, stats, opts, worker
        self.queue = clients.queue_client(target.source)
        # QueueListenerFactory.CreatePoisonQueueReference: a queue whose name ends in "-poison" has
        # no poison queue. QueueProcessor then never poisons: a message over maxDequeueCount is not
        # invoked (BeginProcessingMessageAsync returns false) and a failed one is not released
        # ("leave the message invisible ... to prevent a fast infinite loop"): it comes back when
        # its lease lapses, and stays in the queue until its time-to-live ends.
        self.poison = None if target.source.endswith(POISON_SUFFIX) else clients.queue_client(poison_queue(target.source))
        self.poisoned: list[dict[str, Any]] = []  # what this host moved to the poison queue, and why
        self.pool = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix=target.name)
        self._cv = threading.Condition()
        self._running = 0
        self._leases: dict[str, _Lease] = {}

    def run(self, stop: threading.Event) -> None:
        delay = 0.05
        renew = threading.Thread(target=self._renew_leases, args=(stop,), daemon=True)
        renew.start()
        while not stop.is_set():
            with self._cv:
                while self._running > self.cfg.threshold and not stop.is_set():
                    self._cv.wait(0.5)
            if stop.is_set():
                break
            started = time.monotonic()
            try:
                batch = list(
                    self.queue.receive_messages(
                        messages_per_page=self.cfg.batch_size,
                        max_messages=self.cfg.batch_size,
                        visibility_timeout=int(self.opts.lease_seconds),
                    )
                )
            except HttpResponseError as exc:
                log.warning("receive from %s failed: %s", self.t.source, exc)
                batch = []
            if batch:
                self.idle_since = None
                delay = 0.05
                for msg in batch:
                    with self._cv:
                        self._running += 1
                    self.pool.submit(self._process, msg)
                continue
            with self._cv:
                # Without a poison queue, what failed is parked (invisible, or over maxDequeueCount
                # and never invoked again): --until-idle does not wait for it.
                if self._running == 0 and (self.poison is None or self._approximate_count() == 0):
                    self.idle_since = started
                else:
                    self.idle_since = None
            stop.wait(delay)
            delay = min(delay * 2, self.cfg.max_polling_interval)
        self.pool.shutdown(wait=True)

    def _approximate_count(self) -> int:
        try:
            return int(self.queue.get_queue_properties().approximate_message_count or 0)
        except HttpResponseError:
            return 1

    def _renew_leases(self, stop: threading.Event) -> None:
        interval = max(1.0, self.opts.lease_seconds / 2)
        while not stop.wait(interval):
            for lease in list(self._leases.values()):
                with lease.lock:
                    if lease.done:
                        continue
                    try:
                        r = self.queue.update_message(
                            lease.message_id, lease.pop_receipt, visibility_timeout=int(self.opts.lease_seconds)
                        )
                        lease.pop_receipt = r.pop_receipt or lease.pop_receipt
                    except HttpResponseError as exc:
                        log.warning("could not renew the lease of message %s: %s", lease.message_id, exc)

    def _process(self, msg: Any) -> None:
        lease = _Lease(msg.id, msg.pop_receipt)
        self._leases[msg.id] = lease
        try:
            raw: str = msg.content
            # QueueProcessor.BeginProcessingMessageAsync: a message already dequeued more than
            # maxDequeueCount times (its last attempt died with its host) is poisoned unseen.
            if msg.dequeue_count > self.cfg.max_dequeue_count:
                self._poison(lease, raw, f"dequeued {msg.dequeue_count} times, over maxDequeueCount, before invoking")
                return
            try:
                body = self._decode(raw)
            except ValueError as exc:
                # QueuesExtensionConfigProvider's MessageDecodingFailed handler: HandlePoisonMessageAsync.
                self._poison(lease, raw, f"not valid {self.cfg.message_encoding} text ({exc})")
                return
            ok = self._invoke(msg, lease, body)
            if self.opts.deliver_twice:
                ok = self._invoke(msg, lease, body) and ok
            with lease.lock:
                lease.done = True
                if ok:
                    self._delete(lease)
                elif self.poison is None:
                    log.error(
                        "message %s of %s failed; no poison queue: left invisible until its lease lapses", msg.id, self.t.source
                    )
                elif msg.dequeue_count >= self.cfg.max_dequeue_count:
                    self._poison_locked(lease, raw, f"failed {msg.dequeue_count} attempts")
                else:
                    try:
                        self.queue.update_message(
                            lease.message_id, lease.pop_receipt, visibility_timeout=int(self.cfg.visibility_timeout)
                        )
                    except HttpResponseError as exc:
                        log.warning("could not release message %s: %s", msg.id, exc)
        except Exception:
            log.exception("host error on message %s", msg.id)
        finally:
            self._leases.pop(msg.id, None)
            with self._cv:
                self._running -= 1
                self._cv.notify_all()

    def _decode(self, raw: str) -> str:
        if self.cfg.message_encoding == "none":
            return raw
        try:
            return base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"message is not valid base64 text: {exc}") from exc

    def _invoke(self, msg: Any, lease: _Lease, body: str) -> bool:
        metadata = {
            "Id": meta.Datum(msg.id, "string"),
            "DequeueCount": meta.Datum(msg.dequeue_count, "int"),
            "InsertionTime": meta.Datum(_iso(msg.inserted_on), "string"),
            "ExpirationTime": meta.Datum(_iso(msg.expires_on), "string"),
            "NextVisibleTime": meta.Datum(_iso(msg.next_visible_on), "string"),
            "PopReceipt": meta.Datum(lease.pop_receipt, "string"),
        }
        arg = QueueMessageInConverter.decode(meta.Datum(body, "string"), trigger_metadata=metadata)
        return self.worker.invoke(self.t, self.stats, arg, msg.id, f"message {msg.id} (attempt {msg.dequeue_count})")

    def _delete(self, lease: _Lease) -> None:
        """As the WebJobs SDK's QueueProcessor.DeleteMessageAsync: a message already gone (404), or
        leased again by another delivery after this lease lapsed (400 PopReceiptMismatch: a renewal
        came too late on a busy machine), is that delivery's to delete; the function is idempotent."""
        try:
            self.queue.delete_message(lease.message_id, lease.pop_receipt)
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) != "PopReceiptMismatch":
                raise
            log.warning(
                "message %s of %s: leased again before its delete, left to that delivery", lease.message_id, self.t.source
            )

    def _poison(self, lease: _Lease, raw: str, why: str) -> None:
        with lease.lock:
            lease.done = True
            self._poison_locked(lease, raw, why)

    def _poison_queue(self, raw: str) -> Any:
        """Where a poisoned message goes: the listener's poison queue (None: there is none)."""
        return self.poison

    def _function_of(self, raw: str) -> str:
        """The function a message was for (the summary's ``poisoned[].fn``)."""
        return self.t.name

    def _poison_locked(self, lease: _Lease, raw: str, why: str) -> None:
        poison = self._poison_queue(raw)
        if poison is None:  # HandlePoisonMessageAsync does nothing without a poison queue: parked
            log.error("message %s of %s %s; no poison queue: left in place", lease.message_id, self.t.source, why)
            return
        # CopyMessageToPoisonQueueAsync: the body, no time-to-live (the queue's default, 7 days).
        poison.send_message(raw, time_to_live=self.opts.poison_ttl)
        self._delete(lease)
        self.poisoned.append({"message_id": lease.message_id, "queue": poison.queue_name, "why": why})
        self.stats.poisoned(self._function_of(raw), lease.message_id, poison.queue_name, why)
        log.error("message %s moved to %s: %s", lease.message_id, poison.queue_name, why)


@dataclass
class Subscription:
    """One blob-triggered function's subscription to a container's events, as an Event Grid event
    subscription with its filter: the blobs whose names match the function's path template, its
    FunctionId on their messages, and its own receipts (the extension's receipts are per function
    too: ``BlobReceiptManager``, ``blobreceipts/<hostId>/<functionId>/<etag>/<container>/<blob>``).

    ``delivered`` maps each blob name to the (bare) ETag whose message was queued for it."""

    target: Target
    pattern: NamePattern
    host_id: str
    delivered: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, target: Target, hostid: str) -> Subscription:
        return cls(target, blob_name_pattern(target.path or "{name}"), hostid)

    @property
    def partition(self) -> str:
        """The receipts' partition: :func:`receipts_partition`."""
        return receipts_partition(self.host_id, self.target.name, self.target.source)

    def wants(self, name: str, etag: str) -> bool:
        """A new or changed version of a blob whose name matches the template. The receipt is looked
        up first: the common case (delivered already) costs one dict lookup, not a match."""
        return self.delivered.get(name) != etag and self.pattern.match(name) is not None


def receipts_partition(hostid: str, function: str, container: str) -> str:
    """The receipts of one function on one container, of one host id: ``<host id>/<function>/<container>``
    (the extension's receipts are ``blobreceipts/<hostId>/<functionId>/…``: another app on the same
    account keeps its own)."""
    return keys.escape(f"{hostid}/{function}/{container}")


Event = tuple[str, str, str]  # blob name, ETag, blob type


class BlobListener(_Component):
    """The event side of the ``source=EventGrid`` blob triggers on one container: one event per new or
    changed blob and per function whose path template matches it, remembered per function.

    Event Grid delivers a storage account's events to each event subscription (a webhook
    ``…/runtime/webhooks/blobs?functionName=Host.Functions.<name>`` whose filter selects that
    function's blobs); the extension turns each into a BlobTriggerMessage carrying that
    ``FunctionId`` (``BlobsExtensionConfigProvider.ProcessEventsAsync``) on the host account's one
    blob-trigger queue (:func:`blob_trigger_queue`), which :class:`BlobQueueListener` dispatches by
    it. This stand-in lists the container once for all its subscriptions: a blob that matches two
    functions' templates gives two messages and two receipts, one per function.

    Event Grid delivers events in batches and the extension enqueues them concurrently, so this
    stand-in does not feed one blob at a time either: the new blobs of a listing are taken in
    chunks of at most :data:`EVENT_CHUNK` per function (one entity-group transaction's limit),
    their messages sent by :data:`EVENT_SENDERS` threads at once, then the chunk's receipts written
    in one transaction (they share the function's partition). A blob is remembered only after its
    message is on the queue; a crash in between sends it again (at least once, as Event Grid),
    never loses it.

    The listing is this stand-in's cost, not Event Grid's, so it is paced: the wait after a listing
    is at least :data:`LISTING_PACE` times what it took, and there is none while the host queue
    holds ``backlog`` messages already.
    """

    def __init__(
        self,
        container: str,
        subscriptions: list[Subscription],
        lister: BlobLister,
        queue: QueueClient,
        receipts: TableClient,
        stats: Stats,
        opts: HostOptions,
        backlog: int = 0,
        senders: int = EVENT_SENDERS,
    ) -> None:
        self.container, self.subscriptions, self.stats, self.opts = container, subscriptions, stats, opts
        self.lister, self.queue, self.receipts = lister, queue, receipts
        self.backlog = backlog  # no listing while the host queue holds this many messages (0: always list)
        self._senders = ThreadPoolExecutor(senders, thread_name_prefix=f"events-{container}")

    @classmethod
    def create(
        cls,
        targets: list[Target],
        clients: Clients,
        host_clients: Clients,
        stats: Stats,
        opts: HostOptions,
        hostid: str,
        backlog: int = 0,
    ) -> BlobListener:
        """The event source of these functions' triggers, all on one container of ``clients``' account."""
        (container,) = {t.source for t in targets}
        return cls(
            container,
            [Subscription.of(t, hostid) for t in targets],
            # Listed without the SDK's models (~0.1 ms a blob): this listing runs every poll interval.
            BlobLister.from_connection(clients.connection, clients.credential),
            host_clients.queue_client(blob_trigger_queue(hostid)),
            host_clients.table_client(RECEIPTS_TABLE),
            stats,
            opts,
            backlog,
        )

    def load_receipts(self) -> None:
        for sub in self.subscriptions:
            for row in self.receipts.query_entities("PartitionKey eq @pk", parameters={"pk": sub.partition}):
                sub.delivered[row["Name"]] = _bare(row["ETag"])

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                started = time.monotonic()
                listing = 0.0  # seconds spent in the listing itself (what the pace is measured on)
                try:
                    if self._backlogged():
                        self.idle_since = None
                        stop.wait(self.opts.blob_poll_interval)
                        continue
                    found = 0
                    chunks: dict[int, list[Event]] = {i: [] for i in range(len(self.subscriptions))}
                    pages = iter(self.lister.list_versions(self.container))
                    while not stop.is_set():
                        t0 = time.monotonic()
                        blob = next(pages, None)
                        listing += time.monotonic() - t0
                        if blob is None:
                            break
                        for i, sub in enumerate(self.subscriptions):
                            if not sub.wants(blob.name, blob.etag):
                                continue
                            found += 1
                            chunks[i].append((blob.name, blob.etag, blob.blob_type))
                            if len(chunks[i]) == EVENT_CHUNK:
                                self._events(sub, chunks[i])
                                chunks[i] = []
                    for i, sub in enumerate(self.subscriptions):
                        self._events(sub, chunks[i])
                except (AzureError, StorageError) as exc:
                    log.warning("blob events of %s: %s (listed again next time)", self.container, exc)
                    found = 1
                except Exception:  # one bad round never stops the event source
                    log.exception("blob events of %s failed (listed again next time)", self.container)
                    found = 1
                self.idle_since = started if found == 0 else None
                stop.wait(max(self.opts.blob_poll_interval, LISTING_PACE * listing))
        finally:
            self._senders.shutdown(wait=True)

    def _backlogged(self) -> bool:
        """True while the blob-trigger queue holds at least :attr:`backlog` messages (leased ones too).

        Listing is this stand-in's cost, not Event Grid's: Azurite spends 50-60 µs of CPU per listed
        blob, so a staging container of 600 blobs listed every 0.2 s took 150-180 ms of its CPU a
        second (2-4 ms per ingested image, of the ~11 it spent on each). Blobs found later wait
        behind that backlog anyway.
        """
        if self.backlog <= 0:
            return False
        try:
            count = self.queue.get_queue_properties().approximate_message_count
        except AzureError:
            return False
        return int(count or 0) >= self.backlog

    def _events(self, sub: Subscription, chunk: list[Event]) -> None:
        """BlobCreated events for one function: a BlobTriggerMessage each on the host queue, then their receipts."""
        if not chunk:
            return
        if self.opts.drop_blob_events:
            for name, _, _ in chunk:
                log.info("dropping the event of blob %s for %s (--drop-blob-events)", name, sub.target.name)
            sent = chunk
        else:
            futures = [(event, self._senders.submit(self._send, sub, *event)) for event in chunk]
            sent = []
            for event, future in futures:
                try:
                    future.result()
                    sent.append(event)
                except AzureError as exc:  # not remembered: the next listing sends it again
                    log.warning("event of blob %s for %s not queued: %s", event[0], sub.target.name, exc)
        self._remember(sub, sent)

    def _send(self, sub: Subscription, name: str, etag: str, blob_type: str) -> None:
        # BlobTriggerMessage (Blobs extension, Listeners/BlobTriggerMessage.cs): the JSON the
        # extension queues, and what it writes to webjobs-blobtrigger-poison at the end.
        body = {
            "Type": "BlobTrigger",
            "FunctionId": sub.target.function_id,
            "BlobType": _rest_blob_type(blob_type),
            "ContainerName": self.container,
            "BlobName": name,
            "ETag": etag,
        }
        self.queue.send_message(json.dumps(body))

    def _remember(self, sub: Subscription, events: list[Event]) -> None:
        """Record the delivery of these versions to this function, so neither this host nor a
        restarted one sends them to it again."""
        if not events:
            return
        replace = {"mode": UpdateMode.REPLACE}
        pk = sub.partition
        ops = [
            ("upsert", {"PartitionKey": pk, "RowKey": keys.escape(name), "Name": name, "ETag": etag}, replace)
            for name, etag, _ in events
        ]
        try:
            self.receipts.submit_transaction(ops)
        except AzureError as exc:  # TableTransactionError too; not remembered: sent again, at least once
            log.warning("receipts of %d blob events of %s not written: %s", len(ops), sub.target.name, exc)
            return
        for name, etag, _ in events:
            sub.delivered[name] = _bare(etag)


def _function_id(value: Any) -> str | None:
    """``BlobTriggerMessage.FunctionId`` as Newtonsoft.Json reads it into a string: a string as it
    is, a number or boolean as text (the spelling differs from .NET's, but no function is named
    so: it is dropped either way); None (the extension throws) for null, an object or an array."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return None


def _rest_blob_type(value: str) -> str:
    text = value.lower()
    return "PageBlob" if "page" in text else "AppendBlob" if "append" in text else "BlockBlob"


def blob_queue_config(cfg: BlobConfig) -> QueueConfig:
    """SharedBlobQueueListenerFactory.BlobsOptionsToQueuesOptions: the queue settings of the blob
    trigger's host queue. Visibility timeout zero: a failed blob is re-delivered at once."""
    batch = min(32, cfg.max_degree_of_parallelism // 2 + 1)
    return QueueConfig(
        batch_size=batch,
        new_batch_threshold=cfg.max_degree_of_parallelism - batch,
        max_dequeue_count=cfg.poison_blob_threshold,
        visibility_timeout=0.0,
        max_polling_interval=2.0,
        message_encoding="none",
    )


@dataclass(frozen=True)
class BlobRegistration:
    """A blob-triggered function as the shared blob-trigger queue knows it (``BlobQueueRegistration``):
    what to run, the account its blobs are read from, and that account's blob-trigger poison queue."""

    target: Target
    clients: Clients
    pattern: NamePattern
    poison: QueueClient  # webjobs-blobtrigger-poison in the function's account

    @classmethod
    def of(cls, target: Target, clients: Clients) -> BlobRegistration:
        return cls(target, clients, blob_name_pattern(target.path or "{name}"), clients.queue_client(BLOB_POISON_QUEUE))


SHARED_BLOB_QUEUE_LISTENER = "SharedBlobQueueListener"
"""SharedBlobQueueListenerFactory.SharedBlobQueueListenerFunctionId: the shared listener is no function."""


class BlobQueueListener(QueueListener):
    """The blob triggers' invocations: ONE listener on the host's blob-trigger queue for every blob
    function, dispatching each message to the function its ``FunctionId`` names, as the extension's
    ``SharedBlobQueueListener`` does (``BlobListenerFactory``: one instance per host, shared through
    ``ISharedContextProvider``; each function registers under its FunctionDescriptor ``Id`` and
    ``ShortName``: ``Host.Functions.<name>`` and ``Functions.<name>`` for a script function).

    ``BlobQueueTriggerExecutor.ExecuteAsync`` decides, per message:

    * a body that is not a JSON object, or whose ``FunctionId`` is missing, null, an object or an
      array, is a failed attempt (the extension throws: Newtonsoft cannot make it a
      ``BlobTriggerMessage``, or ``FunctionId == null``): retried, then poisoned;
    * any other ``FunctionId`` (an empty string, or a number or boolean, which Newtonsoft turns into
      a string) is looked up; one no function registered (a function since removed or renamed) is
      logged and the message completed (deleted) without invoking anything; this host also lists
      it in its summary (``dropped``). Every function of the app is registered: the supervisor
      refuses ``--only`` that keeps some of the app's blob functions but not all, so a message for
      a function of this app is never deleted by a process that does not run it; and the queue's
      name holds the app's :func:`host_id`, so another app's messages never reach it;
    * a registered function's message without a non-empty ``ContainerName`` and ``BlobName`` is a
      failed attempt (the SDK throws on reading such a blob);
    * a blob that is gone is completed without invoking;
    * a blob whose ETag changed since its event is completed without invoking for a
      ``LogsAndContainerScan`` trigger only (the scan sends the newer version); an ``EventGrid``
      trigger is invoked on the blob as it is now (its newer version also has its own event).
      Here the rule is the trigger's of the function the message names; in the host it is the
      shared executor's, i.e. the source of whichever blob function created the shared listener,
      applied to every function's messages (the same for an app whose blob triggers all have one
      source, as this one's);
    * otherwise the function runs on the blob.

    The queue is one ``QueueListener`` with the options of ``BlobsOptionsToQueuesOptions``: at most
    ``maxDegreeOfParallelism`` invocations at once across all blob functions; a failure is released
    with visibility zero (an immediate re-delivery, dequeue count + 1); after ``poisonBlobThreshold``
    attempts the message goes to ``webjobs-blobtrigger-poison`` in the account of the function it
    names (``SharedBlobQueueProcessor.GetPoisonQueue``), else in the host's account.

    The input is built from the real host's trigger metadata: ``Properties`` is the v5 SDK's
    ``BlobProperties`` serialised by Newtonsoft.Json, in which ``ETag`` (an ``Azure.ETag`` struct
    with no public properties) becomes ``{}`` and ``BlobType`` (an enum) the number ``0``; the
    function must therefore find the ETag some other way (a HEAD), as it must in Azure. The
    parameters of the path template (``{name}``…) are binding data too, when the blob matches it.
    """

    def __init__(
        self,
        registrations: list[BlobRegistration],
        host_clients: Clients,
        cfg: BlobConfig,
        stats: Stats,
        opts: HostOptions,
        worker: Worker,
        hostid: str,
    ) -> None:
        queue = blob_trigger_queue(hostid)
        shared = Target(SHARED_BLOB_QUEUE_LISTENER, "queue", queue, "AzureWebJobsStorage", "", lambda **_: None)
        super().__init__(shared, host_clients, blob_queue_config(cfg), stats, opts, worker)
        self.poison = host_clients.queue_client(BLOB_POISON_QUEUE)  # the default: for a message naming no function
        self.registry: dict[str, BlobRegistration] = {}
        for reg in registrations:
            self.registry[reg.target.function_id] = reg  # FunctionDescriptor.Id
            self.registry[f"Functions.{reg.target.name}"] = reg  # FunctionDescriptor.ShortName

    def _registration(self, raw: str) -> BlobRegistration | None:
        try:
            event = json.loads(raw)
        except ValueError:
            return None
        function_id = _function_id(event.get("FunctionId")) if isinstance(event, dict) else None
        return self.registry.get(function_id) if function_id is not None else None

    def _poison_queue(self, raw: str) -> Any:
        reg = self._registration(raw)
        return reg.poison if reg else self.poison

    def _function_of(self, raw: str) -> str:
        reg = self._registration(raw)
        return reg.target.name if reg else self.t.name

    def _invoke(self, msg: Any, lease: _Lease, body: str) -> bool:
        try:
            event = json.loads(body)
            if not isinstance(event, dict):
                raise TypeError("not a JSON object")
            function_id = _function_id(event.get("FunctionId"))
            if function_id is None:
                raise TypeError("no FunctionId (null, missing, or not a string, number or boolean)")
        except (ValueError, TypeError) as exc:
            # The extension throws here (InvalidOperationException, or Newtonsoft's error); the
            # message is not completed. A failed attempt: retried, then poisoned, never lost.
            log.error("blob-trigger message %s is not a BlobTriggerMessage (%s): %r", msg.id, exc, body[:200])
            return False
        container, name = event.get("ContainerName"), event.get("BlobName")
        reg = self.registry.get(function_id)
        if reg is None:
            blob = f"{str(container)[:200]}/{str(name)[:1024]}"
            log.warning(
                "blob-trigger message %s names function %r, which this app does not have: deleted without invoking (blob %s)",
                msg.id,
                function_id[:200],
                blob[:400],
            )
            self.stats.dropped(function_id[:200], msg.id, blob, "function not found")
            return True
        if not (isinstance(container, str) and container and isinstance(name, str) and name):
            log.error("blob-trigger message %s for %s has no ContainerName or BlobName: %r", msg.id, reg.target.name, body[:200])
            return False
        target = reg.target
        try:
            fetched = self._download(reg.clients.container(container), name)
        except ResourceNotFoundError:
            log.info("blob %s is gone since its event: nothing to do for %s", name, target.name)
            return True
        except AzureError as exc:
            # A read that fails (a name with a '..' segment, whose URL the client normalises to
            # another blob: issue 25 R9; a connection broken mid-body) is a failed attempt:
            # released at once, retried, then poisoned, never a hang.
            log.error("blob %s cannot be read: %s", name, getattr(exc, "reason", None) or exc)
            return False
        data, url, etag, blob_props = fetched
        if target.scan and _bare(etag) != _bare(str(event.get("ETag", ""))):
            log.info("blob %s changed since its event: the scan sends the newer version to %s", name, target.name)
            return True
        properties = {
            # Azure.Storage.Blobs.Models.BlobProperties through Newtonsoft.Json, as the host sends it.
            **blob_props,
            "BlobType": 0,
            "ETag": {},
        }
        metadata = {
            "BlobTrigger": meta.Datum(f"{container}/{name}", "string"),
            "Uri": meta.Datum(url, "string"),
            "Properties": meta.Datum(json.dumps(properties), "json"),
            "Metadata": meta.Datum(json.dumps(blob_props["Metadata"]), "json"),
        }
        # BlobTriggerBinding.CreateBindingData: the template's values, if it matches, in a dictionary
        # keyed case-insensitively, overriding the built-in entries ("In case of conflict, binding
        # data from the value type overrides"): {uri} replaces Uri's value, under the name Uri.
        for param, value in (reg.pattern.match(name) or {}).items():
            key = next((k for k in metadata if k.lower() == param.lower()), param)
            metadata[key] = meta.Datum(value, "string")
        arg = BlobConverter.decode(meta.Datum(data, "bytes"), trigger_metadata=metadata)
        return self.worker.invoke(target, self.stats, arg, name, f"blob {name} (attempt {msg.dequeue_count})")

    @staticmethod
    def _download(container: ContainerClient, name: str) -> tuple[bytes, str, str, dict[str, Any]]:
        """The blob's bytes, URL, ETag and the trigger's ``Properties`` fields: one Get Blob through the
        container client's pipeline, read without the SDK's downloader (whose header models cost more
        CPU than the read; the host that does this in Azure is not Python). A name with ``.``/``..``
        segments takes the SDK's path, which normalises it as it always did (issue 25 R9)."""
        if any(part in (".", "..") for part in name.split("/")):
            client = container.get_blob_client(name)
            downloader = client.download_blob()
            data = downloader.readall()
            props = downloader.properties
            md5 = props.content_settings.content_md5
            return (
                data,
                client.url,
                str(props.etag),
                {
                    "LastModified": _iso(props.last_modified),
                    "CreatedOn": _iso(getattr(props, "creation_time", None)),
                    "Metadata": props.metadata or {},
                    "ContentLength": props.size,
                    "ContentType": props.content_settings.content_type,
                    "ContentHash": base64.b64encode(bytes(md5)).decode() if md5 else None,
                },
            )
        response = blob_request(container, "GET", name)
        url = response.request.url
        if response.status_code != 200:
            code = response.headers.get("x-ms-error-code", "")
            error = ResourceNotFoundError if response.status_code == 404 else HttpResponseError
            response.read()
            raise error(message=f"{response.status_code} {code}", response=response)
        h = response.headers
        created, modified = h.get("x-ms-creation-time"), h.get("last-modified")
        return (
            response.read(),
            url,
            h.get("etag", ""),
            {
                "LastModified": _iso(parsedate_to_datetime(modified)) if modified else None,
                "CreatedOn": _iso(parsedate_to_datetime(created)) if created else None,
                "Metadata": {k[len("x-ms-meta-") :]: v for k, v in h.items() if k.lower().startswith("x-ms-meta-")},
                "ContentLength": int(h.get("content-length", 0) or 0),
                "ContentType": h.get("content-type"),
                "ContentHash": h.get("content-md5") or None,
            },
        )


class TimerListener(_Component):
    """A timer trigger on its NCRONTAB schedule (and once at start-up with ``timers_now``).

    Like the Functions host, it never runs one timer function twice at once, and a run that
    overlaps the next due time is followed at once by the next one (past due). While waiting it
    reports itself idle, so ``--until-idle`` is not held up by a timer that is not running.
    """

    def __init__(self, target: Target, stats: Stats, opts: HostOptions, worker: Worker) -> None:
        self.t, self.stats, self.opts, self.worker = target, stats, opts, worker
        self.schedule = cron.parse(target.source)

    def run(self, stop: threading.Event) -> None:
        due = datetime.now(UTC) if self.opts.timers_now else self.schedule.next_after(datetime.now(UTC))
        while not stop.is_set():
            now = datetime.now(UTC)
            if now < due:
                self.idle_since = time.monotonic()
                stop.wait(min(0.2, (due - now).total_seconds()))
                continue
            self.idle_since = None
            past_due = (now - due).total_seconds() > 1
            status = {"Last": _iso(now), "Next": _iso(self.schedule.next_after(now)), "LastUpdated": _iso(now)}
            body = json.dumps({"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due})
            arg = TimerRequestConverter.decode(meta.Datum(body, "json"), trigger_metadata=None)
            self.worker.invoke(self.t, self.stats, arg, f"timer {_iso(now)}", "its schedule")
            due = self.schedule.next_after(max(datetime.now(UTC), due))
