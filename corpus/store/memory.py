"""An in-memory implementation of :mod:`corpus.store.ports`, with Azure's semantics where the use
cases depend on them, for fast unit tests and scale runs.

Faithful where it matters (pinned against Azurite by ``tests/test_store_conformance.py``): quoted
ETags that change on every write, ``If-Match``/``If-None-Match`` conditions and the typed errors of
:mod:`corpus.domain.errors`, block blobs committed from staged blocks (no size cap per block; a
commit takes a staged block before a committed one of the same id and discards every other
uncommitted block of the blob), listings in name order in pages with a continuation cursor,
64 KiB messages, visibility timeouts and dequeue counts, 1,024-character names. Copies finish at
once (as on Azurite).

Built on sorted structures so it does not slow as it fills: per container a dict by name plus the
names in order (:class:`corpus.store.sorted_keys.SortedKeys`, chunked), so a listing page costs
O(log n + page), a write or delete O(log n) plus a memmove of one chunk.
Every request is counted in :attr:`MemoryBlobStore.requests` (by verb) so tests and
benchmarks can assert how many reads a use case makes.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import quote

from corpus.domain.errors import (
    BlobConflict,
    BlobExists,
    BlobNotFound,
    CopyFailed,
    MessageTooLarge,
    PreconditionFailed,
    SourceChanged,
    StorageError,
)
from corpus.store.ports import (
    LIST_PAGE,
    MAX_BATCH_DELETES,
    MAX_MESSAGE_BYTES,
    Blob,
    BlobInfo,
    BlobPage,
    BlobStore,
    CopySource,
    CopyState,
    Expected,
    Message,
    check_blob_name,
)
from corpus.store.sorted_keys import SortedKeys

ACCOUNT_URL = "https://memory.blob.core.windows.net"


@dataclass
class _Container:
    blobs: dict[str, Blob] = field(default_factory=dict)
    names: SortedKeys = field(default_factory=SortedKeys)
    staged: dict[str, dict[str, bytes]] = field(default_factory=dict)  # uncommitted blocks by blob
    committed: dict[str, tuple[str, dict[str, bytes]]] = field(default_factory=dict)
    """By blob: (the ETag its Put Block List gave it, its committed blocks), valid while the blob is at
    that ETag: any later write forgets them (stricter than Azure after Set Blob Properties, after
    which nothing here commits)."""


class MemoryBlobStore(BlobStore):
    """:class:`corpus.store.ports.BlobStore` in memory; thread-safe (one lock)."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC), *, put_from_url: bool = False) -> None:
        """``put_from_url``: :meth:`copy_once` with an ``expect`` behaves as Azure's Put Blob From URL
        (MD5 checked, headers written, ``verified``), else as Copy Blob (source headers copied)."""
        self.put_from_url = put_from_url
        self._containers: dict[str, _Container] = {}
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self.clock = clock
        self.requests: Counter[str] = Counter()
        self.traffic: Counter[str] = Counter()  # bytes "in" (uploads) and "out" (downloads), for bandwidth targets

    # -- helpers --------------------------------------------------------------------------

    def _c(self, container: str) -> _Container:
        c = self._containers.get(container)
        if c is None:
            raise BlobNotFound(f"container {container} does not exist", 404, "ContainerNotFound")
        return c

    def _get(self, container: str, name: str) -> Blob:
        check_blob_name(name)
        blob = self._c(container).blobs.get(name)
        if blob is None:
            raise BlobNotFound(f"{container}/{name} does not exist", 404, "BlobNotFound")
        return blob

    def _store(self, container: str, name: str, data: bytes, content_type: str, md5: str) -> BlobInfo:
        check_blob_name(name)
        c = self._c(container)
        info = BlobInfo(
            name=name,
            size=len(data),
            etag=f'"0x8D{next(self._etags):013X}"',
            md5=md5,
            content_type=content_type,
            last_modified=self.clock(),
        )
        if name not in c.blobs:
            c.names.add(name)
        c.blobs[name] = Blob(info, bytes(data))
        c.staged.pop(name, None)
        return info

    @staticmethod
    def _md5(data: bytes) -> str:
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _same_or_conflict(self, container: str, name: str, md5: str) -> None:
        stored = self._c(container).blobs[name]
        stored_md5 = stored.info.md5 or self._md5(stored.data)
        if stored_md5 != md5:
            raise BlobConflict(
                f"{container}/{name} exists with other content (MD5 {stored_md5}, not {md5})", stored_md5, stored.info.size
            )

    # -- the port ---------------------------------------------------------------------------

    def url(self, container: str, name: str = "") -> str:
        return f"{ACCOUNT_URL}/{container}" + (f"/{quote(name, safe='/~')}" if name else "")

    def ensure_container(self, container: str) -> None:
        with self._lock:
            self.requests["ensure_container"] += 1
            self._containers.setdefault(container, _Container())

    def info(self, container: str, name: str) -> BlobInfo:
        with self._lock:
            self.requests["info"] += 1
            return self._get(container, name).info

    def exists(self, container: str, name: str) -> bool:
        with self._lock:
            self.requests["info"] += 1
            check_blob_name(name)
            return name in self._c(container).blobs

    def read(self, container: str, name: str, *, if_match: str | None = None) -> Blob:
        with self._lock:
            self.requests["read"] += 1
            blob = self._get(container, name)
            self.traffic["out"] += blob.info.size
            if if_match is not None and if_match.strip('"') != blob.info.etag.strip('"'):
                raise PreconditionFailed(f"{container}/{name} is not at {if_match}", 412, "ConditionNotMet")
            return blob

    def read_if_changed(self, container: str, name: str, etag: str) -> Blob | None:
        with self._lock:
            self.requests["read"] += 1
            blob = self._get(container, name)
            return None if etag.strip('"') == blob.info.etag.strip('"') else blob

    def read_ranges(self, container: str, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        with self._lock:
            self.requests["read"] += len(ranges)
            data = self._get(container, name).data
            out = [data[off : off + n] for off, n in ranges]
            self.traffic["out"] += sum(len(b) for b in out)
            return out

    def content_md5(self, container: str, info: BlobInfo) -> str:
        return info.md5 or self._md5(self.read(container, info.name, if_match=info.etag).data)

    def put(self, container: str, name: str, data: bytes, content_type: str = "") -> BlobInfo:
        with self._lock:
            self.requests["put"] += 1
            self.traffic["in"] += len(data)
            return self._store(container, name, data, content_type, self._md5(data))

    def put_once(self, container: str, name: str, data: bytes, content_type: str) -> bool:
        md5 = self._md5(data)
        with self._lock:
            self.requests["put"] += 1
            self.traffic["in"] += len(data)
            check_blob_name(name)
            if name in self._c(container).blobs:
                self.requests["info"] += 1
                self._same_or_conflict(container, name, md5)
                return False
            self._store(container, name, data, content_type, md5)
            return True

    def put_if_match(self, container: str, name: str, data: bytes, etag: str, content_type: str) -> BlobInfo:
        with self._lock:
            self.requests["put"] += 1
            check_blob_name(name)
            blob = self._c(container).blobs.get(name)
            if blob is None or blob.info.etag.strip('"') != etag.strip('"'):
                raise PreconditionFailed(f"{container}/{name} is not at {etag}", 412, "ConditionNotMet")
            return self._store(container, name, data, content_type, self._md5(data))

    def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None:
        with self._lock:
            self.requests["stage_block"] += 1
            self.traffic["in"] += len(data)
            check_blob_name(name)
            self._c(container).staged.setdefault(name, {})[block_id] = bytes(data)

    def _committed(self, container: str, name: str, block_ids: Sequence[str]) -> dict[str, bytes]:
        """The blocks ``block_ids`` name, as Put Block List finds them ("Latest"): the blob's
        uncommitted block of that id, else its committed one; a missing one fails the commit
        (400 ``InvalidBlockList``) and changes nothing."""
        c = self._c(container)
        staged = c.staged.get(name, {})
        committed: dict[str, bytes] = {}
        blob, held = c.blobs.get(name), c.committed.get(name)
        if blob is not None and held is not None and held[0] == blob.info.etag:
            committed = held[1]
        found = {i: staged[i] if i in staged else committed.get(i) for i in block_ids}
        missing = [i for i, data in found.items() if data is None]
        if missing:
            raise StorageError(
                f"{container}/{name}: block {missing[0]} is neither uncommitted nor committed", 400, "InvalidBlockList"
            )
        return {i: data for i, data in found.items() if data is not None}

    def _commit(self, container: str, name: str, block_ids: Sequence[str], content_type: str, md5: str) -> None:
        """Put Block List: the blob becomes the named blocks, in order; every other uncommitted
        block of the blob is discarded (:meth:`_store` drops them), as on Azure: a commit can take
        another writer's staged blocks away (``tests/test_store_conformance.py`` pins it on Azurite)."""
        blocks = self._committed(container, name, block_ids)
        info = self._store(container, name, b"".join(blocks[i] for i in block_ids), content_type, md5)
        self._c(container).committed[name] = (info.etag, blocks)

    def commit_blocks(self, container: str, name: str, block_ids: Sequence[str], content_type: str, md5: str = "") -> None:
        with self._lock:
            self.requests["commit_blocks"] += 1
            check_blob_name(name)
            self._commit(container, name, block_ids, content_type, md5)

    def commit_blocks_once(self, container: str, name: str, block_ids: Sequence[str], content_type: str, md5: str) -> bool:
        with self._lock:
            self.requests["commit_blocks"] += 1
            check_blob_name(name)
            if name in self._c(container).blobs:
                self._same_or_conflict(container, name, md5)
                return False
            self._commit(container, name, block_ids, content_type, md5)
            return True

    def copy(self, container: str, name: str, source: CopySource, *, once: bool, expect: Expected | None = None) -> CopyState:
        expect = expect if once and self.put_from_url else None
        with self._lock:
            self.requests["put_from_url" if expect else "copy"] += 1
            check_blob_name(name)
            dest = self._c(container)
            if once and name in dest.blobs:
                raise BlobExists(f"{container}/{name} exists", 409, "BlobAlreadyExists")
            src = self._c(source.container).blobs.get(source.name)
            if src is None or src.info.etag.strip('"') != source.etag.strip('"'):
                raise SourceChanged(f"{source} is not at {source.etag}", 412, "SourceConditionNotMet")
            if expect is not None:
                if hashlib.md5(src.data, usedforsecurity=False).hexdigest() != expect.md5:
                    raise CopyFailed(
                        f"copy of {source.name} into {container}/{name}: the service's MD5 differs from {expect.md5}"
                    )
                info = self._store(container, name, src.data, expect.content_type, expect.md5)
                return CopyState("success", info.etag, verified=True)
            info = self._store(container, name, src.data, src.info.content_type, src.info.md5)
            if src.info.metadata:
                dest.blobs[name] = Blob(replace(info, metadata=dict(src.info.metadata)), src.data)
            return CopyState("success", info.etag)

    def wait_copy(self, container: str, name: str) -> CopyState:
        return CopyState("success", self.info(container, name).etag)

    def set_headers_if_unchanged(self, container: str, name: str, etag: str, *, content_type: str, md5: str) -> None:
        with self._lock:
            self.requests["set_headers"] += 1
            blob = self._get(container, name)
            if etag.strip('"') != blob.info.etag.strip('"'):
                raise PreconditionFailed(f"{container}/{name} is not at {etag}", 412, "ConditionNotMet")
            info = replace(
                blob.info, etag=f'"0x8D{next(self._etags):013X}"', content_type=content_type, md5=md5, last_modified=self.clock()
            )
            self._c(container).blobs[name] = Blob(info, blob.data)

    def delete_if_unchanged(self, container: str, name: str, etag: str) -> bool:
        with self._lock:
            self.requests["delete"] += 1
            check_blob_name(name)
            c = self._c(container)
            blob = c.blobs.get(name)
            if blob is None or blob.info.etag.strip('"') != etag.strip('"'):
                return False
            del c.blobs[name]
            c.names.remove(name)
            return True

    def delete_many_if_unchanged(self, container: str, items: Sequence[tuple[str, str]]) -> list[bool]:
        with self._lock:
            self.requests["delete_batch"] += -(-len(items) // MAX_BATCH_DELETES)
            c = self._c(container)
            out = []
            for name, etag in items:
                check_blob_name(name)
                blob = c.blobs.get(name)
                if blob is None or blob.info.etag.strip('"') != etag.strip('"'):
                    out.append(False)
                    continue
                del c.blobs[name]
                c.names.remove(name)
                out.append(True)
            return out

    def list_page(self, container: str, prefix: str = "", cursor: str | None = None, limit: int = LIST_PAGE) -> BlobPage:
        with self._lock:
            self.requests["list"] += 1
            c = self._c(container)
            after = base64.urlsafe_b64decode(cursor.encode()).decode("utf-8") if cursor else prefix
            names: list[str] = []
            token: str | None = None
            for name in c.names.iter_from(after):
                if not name.startswith(prefix):
                    break
                if len(names) == limit:
                    token = base64.urlsafe_b64encode(name.encode()).decode()
                    break
                names.append(name)
            return BlobPage(tuple(c.blobs[n].info for n in names), token)

    # -- for tests ----------------------------------------------------------------------------

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str]) -> None:
        """Set a blob's metadata (an uploader's, e.g. ``hdi_isfolder``); a write: new ETag."""
        with self._lock:
            blob = self._get(container, name)
            info = replace(blob.info, metadata=dict(metadata), etag=f'"0x8D{next(self._etags):013X}"')
            self._c(container).blobs[name] = Blob(info, blob.data)


@dataclass
class _Queued:
    id: str
    text: str
    visible_at: float
    expires_at: float | None
    dequeue_count: int = 0
    pop_receipt: str = ""


class MemoryOutbox:
    """:class:`corpus.store.ports.Outbox` in memory: FIFO per queue, visibility timeouts and TTLs
    on an injectable monotonic clock, 64 KiB bodies counted after ``encoding`` as on Azure."""

    def __init__(self, encoding: str = "base64", clock: Callable[[], float] = time.monotonic) -> None:
        self.encoding = encoding
        self.clock = clock
        self._queues: dict[str, dict[str, _Queued]] = {}  # by id, in enqueue order
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # messages sent, by queue (Azure's per-queue target)

    def send(self, queue: str, text: str, time_to_live: int | None = None) -> None:
        body = base64.b64encode(text.encode("utf-8")) if self.encoding == "base64" else text.encode("utf-8")
        if len(body) > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(f"message for {queue} is {len(body)} bytes encoded, above Azure's {MAX_MESSAGE_BYTES}")
        with self._lock:
            self.requests["send"] += 1
            now = self.clock()
            ttl = 7 * 24 * 3600 if time_to_live is None else time_to_live
            expires = None if ttl == -1 else now + ttl
            self.sent[queue] += 1
            mid = str(next(self._ids))
            self._queues.setdefault(queue, {})[mid] = _Queued(mid, text, now, expires)

    def receive(self, queue: str, max_messages: int = 32, visibility_timeout: int = 30) -> list[Message]:
        """The first ``max_messages`` visible messages; stops there, so a deep queue costs O(taken)
        (plus the invisible ones ahead of them), not O(queue)."""
        with self._lock:
            self.requests["receive"] += 1
            now = self.clock()
            got: list[Message] = []
            q = self._queues.get(queue, {})
            expired = []
            for m in q.values():
                if len(got) == max_messages:
                    break
                if m.expires_at is not None and m.expires_at <= now:
                    expired.append(m.id)
                    continue
                if m.visible_at > now:
                    continue
                m.visible_at = now + visibility_timeout
                m.dequeue_count += 1
                m.pop_receipt = f"{m.id}.{m.dequeue_count}"
                got.append(Message(m.id, m.pop_receipt, m.text, m.dequeue_count))
            for mid in expired:
                del q[mid]
            return got

    def delete(self, queue: str, message: Message) -> None:
        with self._lock:
            self.requests["delete"] += 1
            m = self._queues.get(queue, {}).get(message.id)
            if m is None:
                raise BlobNotFound(f"message {message.id} is not in {queue}", 404, "MessageNotFound")
            if m.pop_receipt != message.pop_receipt:
                raise PreconditionFailed(f"message {m.id}: pop receipt is stale", 404, "PopReceiptMismatch")
            del self._queues[queue][message.id]

    def texts(self, queue: str) -> list[str]:
        """Every message in ``queue`` (visible or not), oldest first: for assertions."""
        with self._lock:
            return [m.text for m in self._queues.get(queue, {}).values()]
