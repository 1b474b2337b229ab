"""Small helpers shared by the table homes: retry back-off, the ETag condition, and :class:`RowTable`."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any, Generic, Protocol, Self, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from corpus.domain.refs import Cursor

MAX_ATTEMPTS = 200


class TableSource(Protocol):
    """Where the table stores get their ``TableClient`` s: :class:`~corpus.store.storage.Clients`,
    or :class:`~corpus.store.memory_tables.MemoryTables` in memory."""

    def table_client(self, name: str) -> Any: ...


def backoff(attempt: int) -> None:
    """Jittered, capped exponential back-off between optimistic-concurrency attempts."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** min(attempt, 6))))  # noqa: S311 - jitter


def if_unchanged(entity: Any) -> dict[str, Any]:
    """Transaction options: replace ``entity`` only if nobody changed it since we read it."""
    return if_match(entity.metadata["etag"])


def if_match(etag: str) -> dict[str, Any]:
    """Transaction options: replace the entity only if it is still the version at ``etag``."""
    return {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}


def entity_or_none(table: Any, partition_key: str, row_key: str) -> Any | None:
    """The entity at (``partition_key``, ``row_key``), or None where there is none (Get Entity's 404)."""
    try:
        return table.get_entity(partition_key, row_key)
    except ResourceNotFoundError:
        return None


def insert_once(table: Any, entity: dict[str, Any]) -> bool:
    """Insert-only: True if this call created ``entity``, False if its key exists (that row is kept as it is)."""
    try:
        table.create_entity(entity)
    except ResourceExistsError:
        return False
    return True


class StoredRow(Protocol):
    """A row class of :mod:`corpus.store.rows` that knows its own keys."""

    def to_entity(self) -> dict[str, Any]: ...

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Self: ...


R = TypeVar("R", bound=StoredRow)


class RowTable(Generic[R]):
    """The home of one row class (:attr:`row`) in one table: what every such home does alike,
    point reads by key, upserts and insert-only writes, written once here."""

    row: type[R]

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def _get(self, partition_key: str, row_key: str) -> R | None:
        entity = entity_or_none(self.table, partition_key, row_key)
        return None if entity is None else self.row.from_entity(entity)

    def _upsert(self, row: R) -> None:
        self.table.upsert_entity(row.to_entity(), mode=UpdateMode.REPLACE)

    def _insert_once(self, row: R) -> bool:
        return insert_once(self.table, row.to_entity())


def encode_continuation(token: Any) -> str | None:
    """The Tables SDK's continuation (``{"PartitionKey": …, "RowKey": …}``) as one URL-safe string
    (:class:`~corpus.domain.refs.Cursor`)."""
    cursor = Cursor.of(token)
    return cursor.encode() if cursor else None


def decode_continuation(text: str | None) -> dict[str, Any] | None:
    """Inverse of :func:`encode_continuation`; anything else raises ValueError (the caller's 400)."""
    cursor = Cursor.decode(text)
    return cursor.token() if cursor else None


def first_page(pages: Any) -> tuple[list[Any], str | None]:
    """The first page of an SDK ``by_page()`` iterator and the token of the next one (None: last)."""
    page = next(pages, None)
    items = list(page) if page is not None else []
    return items, encode_continuation(pages.continuation_token)


def table_page(table: Any, limit: int, continuation: dict[str, Any] | None) -> tuple[list[Any], str | None]:
    """One request's worth (≤ ``limit``) of a whole table's entities, in key order, and the next token."""
    return first_page(table.list_entities(results_per_page=limit).by_page(continuation_token=continuation))
