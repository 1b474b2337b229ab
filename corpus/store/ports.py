"""The store's ports: what the use cases ask of blob storage and queues, named by their conditions.

``corpus/app`` talks to storage only through these protocols; it imports no ``azure.*``. Two
implementations stand behind them and pass one conformance suite (``tests/test_store_conformance.py``):

* :mod:`corpus.store.azure_ports`: the Azure SDK (production, and Azurite locally);
* :mod:`corpus.store.memory`: in memory, on sorted structures, with Azure's semantics where the use
  cases depend on them (ETags and conditions, block lists, 64 KiB messages, visibility timeouts,
  1,024-character names). Fast unit tests and scale runs use it.

Exactly-once is built from conditional steps, so each verb says its condition in its name:
``put_once`` is ``If-None-Match: *`` (the same MD5 already there is success, other bytes a
:class:`~corpus.domain.errors.BlobConflict`), ``copy_once`` is ``If-None-Match: *`` on the
destination and ``If-Match`` on the source, ``delete_if_unchanged`` and ``set_headers_if_unchanged``
are ``If-Match``. Failures are the typed errors of :mod:`corpus.domain.errors` (``BlobNotFound``,
``BlobExists``, ``SourceChanged``, ``PreconditionFailed``), the same from both implementations:
where Azure and Azurite differ (``SourceConditionNotMet`` vs ``ConditionNotMet``, 404 vs 412 on a
deleted blob, synchronous vs asynchronous copies) the Azure adapter normalises it.

This module is here, beside its adapters, rather than in ``corpus/domain``: it is the contract of
the store layer, and the domain stays free of I/O words. It imports nothing but the domain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from corpus.domain.errors import InvalidNameError
from corpus.domain.limits import MAX_BLOB_NAME

MAX_MESSAGE_BYTES = 64 * 1024
"""Azure's limit on one queue message, after encoding (base64 makes 48 KiB of text 64 KiB)."""

LIST_PAGE = 5000
"""Azure's largest blob listing page."""

MAX_BATCH_DELETES = 256
"""Subrequests of one Blob Batch request (*Blob Batch* REST reference: at most 256)."""


def check_blob_name(name: str) -> None:
    """Azure refuses names above 1,024 characters (with a 400 whose code differs by service
    version, and Azurite accepts them): both implementations refuse them here, the same way."""
    if not name or len(name) > MAX_BLOB_NAME:
        raise InvalidNameError(f"blob name of {len(name)} characters: Azure allows 1..{MAX_BLOB_NAME}")


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A blob's properties: what a HEAD (or a listing) tells. ``md5`` is hex, ``""`` when the blob
    has no whole-blob Content-MD5 (block uploads); ``etag`` as the service quotes it."""

    name: str
    size: int
    etag: str
    md5: str = ""
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None
    blob_type: str = "BlockBlob"


@dataclass(frozen=True, slots=True)
class Blob:
    """A blob's bytes with the properties of exactly that version."""

    info: BlobInfo
    data: bytes


@dataclass(frozen=True, slots=True)
class BlobPage:
    """One page of a listing, in name order; ``cursor`` continues it, ``None`` at the end."""

    items: tuple[BlobInfo, ...]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class Expected:
    """What a copy must produce: the validated bytes' MD5 (hex) and the content type to store."""

    md5: str
    content_type: str


@dataclass(frozen=True, slots=True)
class CopySource:
    """The source of a server-side copy: one blob at one version (the copy is ``If-Match: etag``)."""

    container: str
    name: str
    etag: str

    def __str__(self) -> str:
        return f"{self.container}/{self.name}"


@dataclass(frozen=True, slots=True)
class CopyState:
    """How a server-side copy ended: ``success``, ``failed`` or ``aborted``; ``etag`` is the
    destination's. Azure may finish a copy later than the request: the adapter waits for it.

    ``verified``: the store itself checked the copied bytes against :class:`Expected` ``md5`` and
    wrote them with its ``md5`` and ``content_type`` (Put Blob From URL with
    ``x-ms-source-content-md5``), so there is nothing left for the caller to read back or fix up."""

    status: str
    etag: str
    why: str = ""
    verified: bool = False

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "aborted")


@dataclass(frozen=True, slots=True)
class Message:
    """A received queue message, decoded as the host would decode it."""

    id: str
    pop_receipt: str
    text: str
    dequeue_count: int


class BlobStore(Protocol):
    """Blob storage for one account, by container and blob name."""

    def url(self, container: str, name: str = "") -> str:
        """The blob's (or container's) URL, quoted as a copy source would be."""
        ...

    def ensure_container(self, container: str) -> None:
        """Create the container unless it exists."""
        ...

    def info(self, container: str, name: str) -> BlobInfo:
        """Properties; :class:`BlobNotFound` if missing."""
        ...

    def exists(self, container: str, name: str) -> bool: ...

    def read(self, container: str, name: str, *, if_match: str | None = None) -> Blob:
        """Bytes and properties of one version; ``if_match`` pins it (:class:`PreconditionFailed`)."""
        ...

    def read_if_changed(self, container: str, name: str, etag: str) -> Blob | None:
        """``If-None-Match: etag``: ``None`` when the caller's copy is current (HTTP 304)."""
        ...

    def read_ranges(self, container: str, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(offset, length)`` range, in order."""
        ...

    def content_md5(self, container: str, info: BlobInfo) -> str:
        """The stored MD5, else computed from the bytes of exactly ``info.etag``."""
        ...

    def put(self, container: str, name: str, data: bytes, content_type: str = "") -> BlobInfo:
        """Unconditional write (overwrites): only for places whose contract allows it (``rejected/``)."""
        ...

    def put_once(self, container: str, name: str, data: bytes, content_type: str) -> bool:
        """``If-None-Match: *`` with Content-MD5; True if written, False if the same MD5 is already
        there; other bytes raise :class:`BlobConflict`."""
        ...

    def put_if_match(self, container: str, name: str, data: bytes, etag: str, content_type: str) -> BlobInfo:
        """Replace the blob ``If-Match: etag`` (with Content-MD5): the optimistic-concurrency write of
        a small document many writers update (the catalog's manifest). Returns the new version's
        properties; :class:`PreconditionFailed` if the blob is not at ``etag`` (changed, or gone:
        Azure and Azurite answer 412 or 404, both read as not at ``etag``). Creating one is
        :meth:`put_once`."""
        ...

    def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None:
        """Stage one block (any size up to Azure's 4,000 MiB) of a block blob."""
        ...

    def commit_blocks(self, container: str, name: str, block_ids: Sequence[str], content_type: str, md5: str = "") -> None:
        """Commit the staged blocks in order, replacing the blob."""
        ...

    def commit_blocks_once(self, container: str, name: str, block_ids: Sequence[str], content_type: str, md5: str) -> bool:
        """Commit under ``If-None-Match: *``: as :meth:`put_once` for a blob made of staged blocks."""
        ...

    def copy(self, container: str, name: str, source: CopySource, *, once: bool, expect: Expected | None = None) -> CopyState:
        """The server-side copy each store implements, ``If-Match`` on ``source``'s ETag (the verbs
        below name its two uses). ``once``: ``If-None-Match: *`` on the destination too; otherwise
        the destination is replaced and ``expect`` is ignored."""
        ...

    def copy_once(
        self,
        container: str,
        name: str,
        *,
        source_container: str,
        source_name: str,
        source_etag: str,
        expect: Expected | None = None,
    ) -> CopyState:
        """Server-side copy, ``If-None-Match: *`` on the destination, ``If-Match`` on the source,
        waited for until it ends. :class:`BlobExists` if the destination is taken,
        :class:`SourceChanged` if the source is not at ``source_etag``.

        With ``expect``, a store that can (Put Blob From URL) has the service check the source's
        MD5 and writes ``expect``'s headers in the same request, and says so (``verified``); one
        whose bytes differ raises :class:`~corpus.domain.errors.CopyFailed` and writes nothing.
        Without the capability ``expect`` is ignored and the caller verifies as before.

        Written here once for every store (each subclasses this protocol and implements :meth:`copy`)."""
        return self.copy(container, name, CopySource(source_container, source_name, source_etag), once=True, expect=expect)

    def copy_over(self, container: str, name: str, *, source_container: str, source_name: str, source_etag: str) -> CopyState:
        """Server-side copy that overwrites the destination; ``If-Match`` on the source only."""
        return self.copy(container, name, CopySource(source_container, source_name, source_etag), once=False)

    def wait_copy(self, container: str, name: str) -> CopyState:
        """How the copy into ``name`` ended (``success`` when it is no copy); :class:`BlobNotFound`."""
        ...

    def set_headers_if_unchanged(self, container: str, name: str, etag: str, *, content_type: str, md5: str) -> None:
        """Set Content-Type and Content-MD5 ``If-Match: etag`` (:class:`PreconditionFailed`)."""
        ...

    def delete_if_unchanged(self, container: str, name: str, etag: str) -> bool:
        """Delete ``If-Match: etag``; False when the blob changed or is gone (Azurite answers 412
        rather than 404 for a deleted blob: both read as False)."""
        ...

    def delete_many_if_unchanged(self, container: str, items: Sequence[tuple[str, str]]) -> list[bool]:
        """:meth:`delete_if_unchanged` of each (name, etag), in Blob Batch requests of at most
        :data:`MAX_BATCH_DELETES` Delete Blob subrequests each (one request for the lot)."""
        ...

    def list_page(self, container: str, prefix: str = "", cursor: str | None = None, limit: int = LIST_PAGE) -> BlobPage:
        """One page of the blobs under ``prefix``; :class:`BlobNotFound` if the container is missing."""
        ...


class Outbox(Protocol):
    """Queue messages out (and, for tests and tools, in), encoded as host.json tells the triggers."""

    def send(self, queue: str, text: str, time_to_live: int | None = None) -> None:
        """Enqueue; ``time_to_live=-1`` never expires. Above 64 KiB encoded: :class:`MessageTooLarge`."""
        ...

    def receive(self, queue: str, max_messages: int = 32, visibility_timeout: int = 30) -> list[Message]:
        """Up to ``max_messages`` visible messages, hidden for ``visibility_timeout`` seconds."""
        ...

    def delete(self, queue: str, message: Message) -> None:
        """Remove a received message (by its pop receipt)."""
        ...


def iter_blobs(store: BlobStore, container: str, prefix: str = "") -> Iterator[BlobInfo]:
    """Every blob under ``prefix``, page by page (memory bounded by one page)."""
    cursor: str | None = None
    while True:
        page = store.list_page(container, prefix, cursor)
        yield from page.items
        if page.cursor is None:
            return
        cursor = page.cursor


RANGE_BYTES = 4 * 1024 * 1024


def iter_ranges(store: BlobStore, container: str, name: str, step: int = RANGE_BYTES) -> Iterator[bytes]:
    """A blob's bytes in ``step``-byte ranges (memory bounded by one range), read at one version:
    a blob replaced meanwhile raises :class:`~corpus.domain.errors.PreconditionFailed` rather than
    mixing two versions' bytes."""
    info = store.info(container, name)
    for offset in range(0, info.size, step):
        yield store.read_ranges(container, name, [(offset, min(step, info.size - offset))])[0]
