"""The trigger listeners of ``corpus host``: queue triggers with the Functions host's batching,
lease, retry and poison semantics, and ``source=EventGrid`` blob triggers with one delivery per
new or changed blob, remembered across restarts. Inputs are built by the azure-functions library's
own converters from the same trigger metadata the real host sends.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode
from azure.functions import meta
from azure.functions.blob import BlobConverter
from azure.functions.queue import QueueMessageInConverter
from azure.functions.timer import TimerRequestConverter

from corpus.devhost.discovery import Target
from corpus.domain import cron, keys
from corpus.store.hostconfig import BlobConfig, QueueConfig
from corpus.store.settings import BLOB_POISON_QUEUE, POISON_TTL, poison_queue
from corpus.store.storage import Clients

log = logging.getLogger("corpus.host")

RECEIPTS_TABLE = "DevHostBlobReceipts"


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


def invoke(target: Target, stats: Stats, arg: Any, key: str, what: str) -> bool:
    """Call one function with its bound input, as the host does: count it, log a failure, never raise."""
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


@dataclass
class HostOptions:
    app_dir: Path
    until_idle: bool = False
    idle_timeout: float | None = None
    blob_poll_interval: float = 0.5
    lease_seconds: float = 60.0
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

    def __init__(self, target: Target, clients: Clients, cfg: QueueConfig, stats: Stats, opts: HostOptions) -> None:
        self.t, self.cfg, self.stats, self.opts = target, cfg, stats, opts
        self.queue = clients.queue_client(target.source)
        self.poison = clients.queue_client(poison_queue(target.source))
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
                        lease.pop_receipt = r.pop_receipt or lease.pop_receipt
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
        return invoke(self.t, self.stats, arg, msg.id, f"message {msg.id} (attempt {msg.dequeue_count})")

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
        self.poison.send_message(raw, time_to_live=POISON_TTL)
        self._delete(lease)
        log.error("message %s moved to %s-poison: %s", lease.message_id, self.t.source, why)


class BlobListener(_Component):
    """A ``source=EventGrid`` blob trigger: one delivery per new or changed blob, remembered.

    Follows ``host.json``'s ``extensions.blobs`` as the Functions host does: at most
    ``maxDegreeOfParallelism`` deliveries at once, ``poisonBlobThreshold`` attempts per blob.
    """

    def __init__(
        self, target: Target, clients: Clients, host_clients: Clients, cfg: BlobConfig, stats: Stats, opts: HostOptions
    ) -> None:
        self.t, self.cfg, self.stats, self.opts = target, cfg, stats, opts
        self.container = clients.container(target.source)
        self.receipts: TableClient = host_clients.table_client(RECEIPTS_TABLE)
        self.poison = clients.queue_client(BLOB_POISON_QUEUE)  # the trigger's account, as the host does
        self.pool = ThreadPoolExecutor(cfg.max_degree_of_parallelism, thread_name_prefix=target.name)
        self._delivered: dict[str, str] = {}
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(cfg.max_degree_of_parallelism)
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
                    self.pool.submit(self._deliver, blob.name, blob.etag)
            except HttpResponseError as exc:
                log.warning("listing %s failed: %s", self.t.source, exc)
                found = 1
            with self._lock:
                quiet = found == 0 and not self._in_flight
            self.idle_since = started if quiet else None
            stop.wait(self.opts.blob_poll_interval)
        self.pool.shutdown(wait=True)

    def _deliver(self, name: str, listed_etag: str) -> None:
        try:
            if self.opts.drop_blob_events:
                log.info("dropping the event of blob %s (--drop-blob-events)", name)
                self._remember(name, listed_etag)
                return
            client = self.container.get_blob_client(name)
            try:
                data, props = self._download(client)
            except ResourceNotFoundError:
                return
            except HttpResponseError as exc:
                # The host cannot read the blob it was told about (a name whose URL the client
                # normalises to another blob, '..'): after its retries it is poisoned like a failing
                # invocation and remembered, so it is not read again until it changes.
                self._poison_blob(name, listed_etag, f"unreadable: {exc.reason or exc.status_code}")
                self._remember(name, listed_etag)
                return
            etag = props.etag
            ok = False
            for attempt in range(1, self.cfg.poison_blob_threshold + 1):
                ok = self._invoke(name, data, props)
                if ok and self.opts.deliver_twice:
                    ok = self._invoke(name, data, props)
                if ok:
                    break
                time.sleep(min(0.1 * 2**attempt, 2.0))  # retry back-off, as the host's
            if not ok:
                self._poison_blob(name, etag, "failed")
            self._remember(name, etag)
        except Exception:
            log.exception("host error delivering blob %s", name)
        finally:
            with self._lock:
                self._in_flight.discard(name)
            self._slots.release()

    def _download(self, client: Any) -> tuple[bytes, Any]:
        """(bytes, properties) of the blob, retrying a failed read (not a missing blob) with the host's back-off."""
        for attempt in range(1, self.cfg.poison_blob_threshold + 1):
            try:
                downloader = client.download_blob()
                return downloader.readall(), downloader.properties
            except ResourceNotFoundError:
                raise
            except HttpResponseError:
                if attempt == self.cfg.poison_blob_threshold:
                    raise
                time.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")  # pragma: no cover

    def _poison_blob(self, name: str, etag: str, why: str) -> None:
        body = {"Type": "BlobTrigger", "FunctionId": self.t.name, "BlobType": "BlockBlob", "ContainerName": self.t.source}
        self.poison.send_message(json.dumps({**body, "BlobName": name, "ETag": etag}), time_to_live=POISON_TTL)
        log.error("blob %s %s %d times: moved to %s", name, why, self.cfg.poison_blob_threshold, BLOB_POISON_QUEUE)

    def _remember(self, name: str, etag: str) -> None:
        """Record the delivery of this version, so neither this host nor a restarted one sends it again."""
        self.receipts.upsert_entity(
            {"PartitionKey": self._pk, "RowKey": keys.escape(name), "Name": name, "ETag": etag}, mode=UpdateMode.REPLACE
        )
        with self._lock:
            self._delivered[name] = _bare(etag)

    def _invoke(self, name: str, data: bytes, props: Any) -> bool:
        properties = {
            "BlobType": str(props.blob_type.value if hasattr(props.blob_type, "value") else props.blob_type),
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
        return invoke(self.t, self.stats, arg, name, f"blob {name}")


class TimerListener(_Component):
    """A timer trigger on its NCRONTAB schedule (and once at start-up with ``timers_now``).

    Like the Functions host, it never runs one timer function twice at once, and a run that
    overlaps the next due time is followed at once by the next one (past due). While waiting it
    reports itself idle, so ``--until-idle`` is not held up by a timer that is not running.
    """

    def __init__(self, target: Target, stats: Stats, opts: HostOptions) -> None:
        self.t, self.stats, self.opts = target, stats, opts
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
            invoke(self.t, self.stats, arg, f"timer {_iso(now)}", "its schedule")
            due = self.schedule.next_after(max(datetime.now(UTC), due))
