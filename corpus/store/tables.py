"""Small helpers shared by the table homes: retry back-off and the ETag condition."""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.data.tables import UpdateMode

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
    return {"mode": UpdateMode.REPLACE, "etag": entity.metadata["etag"], "match_condition": MatchConditions.IfNotModified}


def encode_continuation(token: Any) -> str | None:
    """The Tables SDK's continuation (``{"PartitionKey": …, "RowKey": …}``) as one URL-safe string."""
    if not token:
        return None
    raw = json.dumps({"pk": token.get("PartitionKey"), "rk": token.get("RowKey")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_continuation(text: str | None) -> dict[str, Any] | None:
    """Inverse of :func:`encode_continuation`; anything else raises ValueError (the caller's 400).

    The token only says where the next page starts: a forged one can skip rows of the same query,
    never reach another table, so validating its shape is all that is needed.
    """
    if not text:
        return None
    if len(text) > 4096:
        raise ValueError("continuation token too long")
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise ValueError("malformed continuation token") from exc
    if not isinstance(data, dict) or set(data) != {"pk", "rk"}:
        raise ValueError("malformed continuation token")
    if not all(v is None or (isinstance(v, str) and len(v) <= 1024) for v in data.values()):
        raise ValueError("malformed continuation token")
    return {"PartitionKey": data["pk"], "RowKey": data["rk"]}


def first_page(pages: Any) -> tuple[list[Any], str | None]:
    """The first page of an SDK ``by_page()`` iterator and the token of the next one (None: last)."""
    page = next(pages, None)
    items = list(page) if page is not None else []
    return items, encode_continuation(pages.continuation_token)


def table_page(table: Any, limit: int, continuation: dict[str, Any] | None) -> tuple[list[Any], str | None]:
    """One request's worth (≤ ``limit``) of a whole table's entities, in key order, and the next token."""
    return first_page(table.list_entities(results_per_page=limit).by_page(continuation_token=continuation))
