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
* blob triggers (``source=EventGrid``) get each new or changed blob once, like one BlobCreated
  event per upload; what was delivered is remembered in a receipts table across restarts;
* in-flight messages keep their lease (visibility) renewed, and a killed host's messages
  reappear after the lease expires, exactly as with the real host.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import azure.functions as func
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode
from azure.functions import meta
from azure.functions.blob import BlobConverter
from azure.functions.queue import QueueMessageInConverter

from . import keys
from .hostconfig import QueueConfig, load_queue_config
from .settings import BLOB_POISON_QUEUE, Connection, Settings
from .storage import Clients

log = logging.getLogger("corpus.host")

RECEIPTS_TABLE = "DevHostBlobReceipts"
_SETTING_EXPR = re.compile(r"%([^%]+)%")

_functions_cache: dict[int, list[Any]] = {}


def app_functions(app: func.FunctionApp) -> list[Any]:
    """``get_functions()`` may be called once per app object: cache its answer."""
    key = id(app)
    if key not in _functions_cache:
        _functions_cache[key] = app.get_functions()
    return _functions_cache[key]


def resolve(expr: str, values: dict[str, str] | Any) -> str:
    """Resolve ``%NAME%`` binding expressions from app settings, as the host does."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"binding expression %{name}% names an app setting that is not set")
        return str(values[name])

    return _SETTING_EXPR.sub(sub, expr)


@dataclass(frozen=True)
class Target:
    """One discovered function: what triggers it and how to call it."""

    name: str
    kind: str  # "blob" | "queue"
    source: str  # container or queue name, resolved
    connection: str
    arg_name: str
    call: Callable[..., Any]


def discover(app_dir: Path, values: dict[str, str] | Any) -> list[Target]:
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    module = importlib.import_module("function_app")
    targets = []
    for fn in app_functions(module.app):
        trigger = fn.get_trigger()
        ttype = trigger.get_binding_name()
        if ttype == "blobTrigger":
            path = resolve(trigger.path, values)
            container, _, pattern = path.partition("/")
            if pattern != "{name}":
                raise ValueError(f"{fn.get_function_name()}: only '<container>/{{name}}' blob paths are supported here")
            targets.append(
                Target(fn.get_function_name(), "blob", container, trigger.connection, trigger.name, fn.get_user_function())
            )
        elif ttype == "queueTrigger":
            targets.append(
                Target(
                    fn.get_function_name(),
                    "queue",
                    resolve(trigger.queue_name, values),
                    trigger.connection,
                    trigger.name,
                    fn.get_user_function(),
                )
            )
        else:
            log.warning("function %s has a %s trigger, which this host does not run", fn.get_function_name(), ttype)
    return targets


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

    def busy(self) -> bool:
        with self._lock:
            return any(self.in_flight.values())

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"ok": dict(self.ok), "failed": dict(self.failed), "max_in_flight": dict(self.max_in_flight)}


@dataclass
class HostOptions:
    app_dir: Path
    until_idle: bool = False
    idle_timeout: float | None = None
    blob_poll_interval: float = 0.5
    lease_seconds: float = 60.0
    deliver_twice: bool = False
    trace: TextIO | None = None


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

    def __init__(self, target: Target, clients: Clients, cfg: QueueConfig, stats: Stats, opts: HostOptions) -> None:
        self.t, self.cfg, self.stats, self.opts = target, cfg, stats, opts
        self.queue = clients.queue_client(target.source)
        self.poison = clients.queue_client(target.source + "-poison")
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
                if self._running == 0 and self._approximate_count() == 0:
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
                        lease.pop_receipt = r.pop_receipt
                    except HttpResponseError as exc:
                        log.warning("could not renew the lease of message %s: %s", lease.message_id, exc)

    def _process(self, msg: Any) -> None:
        lease = _Lease(msg.id, msg.pop_receipt)
        self._leases[msg.id] = lease
        try:
            raw: str = msg.content
            try:
                body = self._decode(raw)
            except ValueError as exc:
                self._poison(lease, raw, f"not valid {self.cfg.message_encoding} text ({exc})")
                return
            ok = self._invoke(msg, lease, body)
            if self.opts.deliver_twice:
                ok = self._invoke(msg, lease, body) and ok
            with lease.lock:
                lease.done = True
                if ok:
                    self._delete(lease)
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
        started = self.stats.start(self.t.name)
        ok = False
        try:
            self.t.call(**{self.t.arg_name: arg})
            ok = True
        except Exception as exc:  # noqa: BLE001 - the function's failure is the host's to handle
            log.warning("%s failed on message %s (attempt %s): %s", self.t.name, msg.id, msg.dequeue_count, exc)
        finally:
            self.stats.end(self.t.name, started, ok, msg.id)
        return ok

    def _delete(self, lease: _Lease) -> None:
        try:
            self.queue.delete_message(lease.message_id, lease.pop_receipt)
        except ResourceNotFoundError:
            pass

    def _poison(self, lease: _Lease, raw: str, why: str) -> None:
        with lease.lock:
            lease.done = True
            self._poison_locked(lease, raw, why)

    def _poison_locked(self, lease: _Lease, raw: str, why: str) -> None:
        self.poison.send_message(raw)
        self._delete(lease)
        log.error("message %s moved to %s-poison: %s", lease.message_id, self.t.source, why)


class BlobListener(_Component):
    """A ``source=EventGrid`` blob trigger: one delivery per new or changed blob, remembered."""

    def __init__(
        self, target: Target, clients: Clients, host_clients: Clients, cfg: QueueConfig, stats: Stats, opts: HostOptions
    ) -> None:
        self.t, self.cfg, self.stats, self.opts = target, cfg, stats, opts
        self.container = clients.container(target.source)
        self.receipts: TableClient = host_clients.table_client(RECEIPTS_TABLE)
        self.poison = clients.queue_client(BLOB_POISON_QUEUE)  # the trigger's account, as the host does
        self.pool = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix=target.name)
        self._delivered: dict[str, str] = {}
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(cfg.max_concurrency)
        self._pk = keys.escape(f"{target.name}/{target.source}")

    def load_receipts(self) -> None:
        for row in self.receipts.query_entities("PartitionKey eq @pk", parameters={"pk": self._pk}):
            self._delivered[row["Name"]] = _bare(row["ETag"])

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            found = 0
            try:
                for blob in self.container.list_blobs(include=["metadata"]):
                    if stop.is_set():
                        break
                    with self._lock:
                        if self._delivered.get(blob.name) == _bare(blob.etag) or blob.name in self._in_flight:
                            continue
                        self._in_flight.add(blob.name)
                    found += 1
                    self._slots.acquire()
                    self.pool.submit(self._deliver, blob.name)
            except HttpResponseError as exc:
                log.warning("listing %s failed: %s", self.t.source, exc)
                found = 1
            with self._lock:
                quiet = found == 0 and not self._in_flight
            self.idle_since = started if quiet else None
            stop.wait(self.opts.blob_poll_interval)
        self.pool.shutdown(wait=True)

    def _deliver(self, name: str) -> None:
        try:
            client = self.container.get_blob_client(name)
            try:
                downloader = client.download_blob()
                data = downloader.readall()
            except ResourceNotFoundError:
                return
            props = downloader.properties
            etag = props.etag
            ok = False
            for attempt in range(1, self.cfg.max_dequeue_count + 1):
                ok = self._invoke(name, data, props)
                if ok and self.opts.deliver_twice:
                    ok = self._invoke(name, data, props)
                if ok:
                    break
                time.sleep(min(0.1 * 2**attempt, 2.0))  # retry back-off, as the host's
            if not ok:
                self.poison.send_message(
                    json.dumps(
                        {
                            "Type": "BlobTrigger",
                            "FunctionId": self.t.name,
                            "BlobType": "BlockBlob",
                            "ContainerName": self.t.source,
                            "BlobName": name,
                            "ETag": etag,
                        }
                    )
                )
                log.error("blob %s failed %d times: moved to %s", name, self.cfg.max_dequeue_count, BLOB_POISON_QUEUE)
            self.receipts.upsert_entity(
                {"PartitionKey": self._pk, "RowKey": keys.escape(name), "Name": name, "ETag": etag}, mode=UpdateMode.REPLACE
            )
            with self._lock:
                self._delivered[name] = _bare(etag)
        except Exception:
            log.exception("host error delivering blob %s", name)
        finally:
            with self._lock:
                self._in_flight.discard(name)
            self._slots.release()

    def _invoke(self, name: str, data: bytes, props: Any) -> bool:
        properties = {
            "ETag": props.etag,
            "Length": props.size,
            "ContentType": props.content_settings.content_type,
            "ContentMD5": base64.b64encode(bytes(props.content_settings.content_md5)).decode()
            if props.content_settings.content_md5
            else None,
            "LastModified": _iso(props.last_modified),
        }
        metadata = {
            "BlobTrigger": meta.Datum(f"{self.t.source}/{name}", "string"),
            "Uri": meta.Datum(self.container.get_blob_client(name).url, "string"),
            "Properties": meta.Datum(json.dumps(properties), "json"),
            "Metadata": meta.Datum(json.dumps(props.metadata or {}), "json"),
            "name": meta.Datum(name, "string"),
        }
        arg = BlobConverter.decode(meta.Datum(data, "bytes"), trigger_metadata=metadata)
        started = self.stats.start(self.t.name)
        ok = False
        try:
            self.t.call(**{self.t.arg_name: arg})
            ok = True
        except Exception as exc:  # noqa: BLE001
            log.warning("%s failed on blob %s: %s", self.t.name, name, exc)
        finally:
            self.stats.end(self.t.name, started, ok, name)
        return ok


def run_host(opts: HostOptions, settings: Settings | None = None) -> dict[str, Any]:
    """Run every discovered function until stopped (or until idle); return the statistics."""
    settings = settings or Settings.from_env()
    values = dict(settings.values)
    os.environ["AzureWebJobsScriptRoot"] = str(opts.app_dir)  # as the Functions host sets it
    targets = discover(opts.app_dir, values)
    cfg = load_queue_config(opts.app_dir / "host.json")
    stats = Stats(opts.trace)
    host_clients = Clients(Connection.from_env(values, "AzureWebJobsStorage"))
    host_clients.ensure(tables=(RECEIPTS_TABLE,))

    from .runtime import Runtime

    Runtime.create(settings, opts.app_dir / "host.json").ensure_resources()

    components: list[_Component] = []
    for t in targets:
        clients = Clients(Connection.from_env(values, t.connection))
        if t.kind == "queue":
            clients.ensure(queues=(t.source, t.source + "-poison"))
            components.append(QueueListener(t, clients, cfg, stats, opts))
        else:
            clients.ensure(queues=(BLOB_POISON_QUEUE,))
            listener = BlobListener(t, clients, host_clients, cfg, stats, opts)
            listener.load_receipts()
            components.append(listener)
        log.info("listening: %s (%s trigger on %s, at most %d at once)", t.name, t.kind, t.source, cfg.max_concurrency)

    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), name=f"listener-{i}", daemon=True) for i, c in enumerate(components)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + opts.idle_timeout if opts.idle_timeout else None
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
        for th in threads:
            th.join()
    summary = stats.summary()
    summary["timed_out"] = timed_out
    return summary


def _idle(components: list[_Component], stats: Stats) -> bool:
    """Idle when every listener saw nothing to do after the last invocation ended, twice over."""
    if stats.busy():
        return False
    last = stats.last_activity
    marks = [c.idle_since for c in components]
    return all(m is not None and m > last for m in marks)
