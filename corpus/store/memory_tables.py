"""An in-memory stand-in for the part of the Tables SDK's ``TableClient`` the table stores use.

The table stores (:mod:`corpus.store.catalog` and its ``*_table`` modules) are thin adapters over
``TableClient``; the simplest faithful way to run them without Azurite is to stand in for that
surface, with the service's semantics the stores depend on, raising the SDK's own exceptions:

* ``get_entity``, ``create_entity`` (insert-only: ``ResourceExistsError``), ``upsert_entity`` and
  ``update_entity`` (``MERGE``/``REPLACE``; ``If-Match`` ETags: ``ResourceModifiedError``),
  ``delete_entity`` (a missing entity is no error, as in the SDK);
* ``query_entities`` with the filters we write (``eq ne gt ge lt le``, ``and``/``or``/``not``,
  parentheses, ``@parameters``; ``Timestamp`` compares the service time of the last write) and
  ``list_entities``, in (PartitionKey, RowKey) order, in pages of at most 1,000 entities with a
  ``{"PartitionKey", "RowKey"}`` continuation, and ``select``;
* ``submit_transaction``: at most 100 operations on one partition, all or nothing, failures as
  ``TableTransactionError`` with the failing operation's ``index`` and ``error_code``;
* Int64: ``EntityProperty(…, INT64)`` round-trips as such; a plain ``int`` outside Int32 is a
  ``TypeError`` as in the SDK's serializer. Keys above 1 KiB or with ``/ \\ # ?`` are refused.

Entities live in one dict plus sorted keys (:class:`corpus.store.sorted_keys.SortedKeys`, chunked;
partition keys, and each partition's row keys): a query whose filter pins the partition (and a
RowKey range) starts at its first key and stops after its last, so the cost is O(log n + result),
not O(table), and an insert moves one chunk of one partition's keys, not the table's.
Requests are counted per partition in :attr:`MemoryTable.requests`.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableEntity, TableTransactionError, UpdateMode

from corpus.store.sorted_keys import SortedKeys

MAX_PAGE = 1000
MAX_BATCH = 100
INT32 = range(-(2**31), 2**31)
_BAD_KEY = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")

Key = tuple[str, str]


def _error(cls: type[HttpResponseError], status: int, code: str, message: str) -> HttpResponseError:
    exc = cls(message=message)
    exc.status_code = status
    exc.error_code = code  # type: ignore[attr-defined]
    return exc


def _check_key(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    if len(value.encode("utf-8")) > 1024 or _BAD_KEY.search(value):
        raise _error(HttpResponseError, 400, "OutOfRangeInput", f"{name} {value[:40]!r}… is not a valid key")
    return value


def _stored_value(name: str, value: Any) -> Any:
    if isinstance(value, EntityProperty):
        if value.edm_type == EdmType.INT64:
            return EntityProperty(int(value.value), EdmType.INT64)
        return value.value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], EdmType):
        return _stored_value(name, EntityProperty(value[0], value[1]))
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value not in INT32:
            raise TypeError(f"{value} is too large to be cast to type Int32 ({name}); use Int64")
        return value
    if isinstance(value, str) and len(value.encode("utf-16-le")) > 64 * 1024:
        raise _error(HttpResponseError, 400, "PropertyValueTooLarge", f"property {name} is above 32 K characters")
    return value


# -- filters ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\()|(\))|'((?:[^']|'')*)'|(@\w+)|([A-Za-z_]\w*)|(-?\d+(?:\.\d+)?))")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
Predicate = Callable[[Mapping[str, Any]], bool]


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, EntityProperty) else value


class _Filter:
    """A recursive-descent parser of the OData subset we write; keeps the top-level key bounds."""

    def __init__(self, text: str, parameters: Mapping[str, Any]) -> None:
        self.tokens: list[tuple[str, Any]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ValueError(f"cannot parse filter at {text[pos:]!r}")
            pos = m.end()
            lp, rp, string, param, word, number = m.groups()
            if lp:
                self.tokens.append(("(", None))
            elif rp:
                self.tokens.append((")", None))
            elif string is not None:
                self.tokens.append(("value", string.replace("''", "'")))
            elif param:
                self.tokens.append(("value", _plain(parameters[param[1:]])))
            elif number:
                self.tokens.append(("value", float(number) if "." in number else int(number)))
            elif word in ("true", "false"):
                self.tokens.append(("value", word == "true"))
            else:
                self.tokens.append(("word", word))
        self.i = 0
        self.bounds: list[tuple[str, str, Any]] = []  # (property, op, value) of top-level conjuncts
        self.predicate = self._or(top=True)
        if self.i != len(self.tokens):
            raise ValueError(f"trailing tokens in filter {text!r}")

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self) -> tuple[str, Any]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _or(self, top: bool = False) -> Predicate:
        start = len(self.bounds)
        parts = [self._and(top)]
        while self._peek() == ("word", "or"):
            self._take()
            parts.append(self._and(False))
        if len(parts) == 1:
            return parts[0]
        del self.bounds[start:]  # a disjunction bounds nothing
        return lambda e: any(p(e) for p in parts)

    def _and(self, top: bool) -> Predicate:
        parts = [self._not(top)]
        while self._peek() == ("word", "and"):
            self._take()
            parts.append(self._not(top))
        return parts[0] if len(parts) == 1 else (lambda e: all(p(e) for p in parts))

    def _not(self, top: bool) -> Predicate:
        if self._peek() == ("word", "not"):
            self._take()
            inner = self._not(False)
            return lambda e: not inner(e)
        if self._peek() == ("(", None):
            self._take()
            inner = self._or(False)
            if self._take() != (")", None):
                raise ValueError("unbalanced parentheses in filter")
            return inner
        kind, prop = self._take()
        _, op = self._take()
        vkind, value = self._take()
        if kind != "word" or vkind != "value" or op not in _OPS:
            raise ValueError(f"unsupported comparison {prop} {op} {value}")
        if top and prop in ("PartitionKey", "RowKey"):
            self.bounds.append((prop, op, value))
        compare = _OPS[op]

        def test(e: Mapping[str, Any]) -> bool:
            if prop == "Timestamp":  # the service's time of the last write: in the metadata, as the SDK returns it
                got = getattr(e, "metadata", {}).get("timestamp")
                try:
                    return got is not None and compare(got, value)
                except TypeError:
                    return False
            if prop not in e:
                return False
            got = _plain(e[prop])
            try:
                return compare(got, value)
            except TypeError:
                return False

        return test


def _key_range(bounds: Sequence[tuple[str, str, Any]]) -> tuple[Key, Callable[[Key], bool]]:
    """The first key to look at and a test for 'past the last' from top-level key comparisons."""
    pk_eq = next((v for p, op, v in bounds if p == "PartitionKey" and op == "eq"), None)
    lo: Key = ("", "")
    uppers: list[Callable[[Key], bool]] = []
    for prop, op, v in bounds:
        if not isinstance(v, str):
            continue
        if prop == "PartitionKey":
            if op in ("eq", "ge", "gt"):
                lo = max(lo, (v, ""))
            if op in ("eq", "le", "lt"):
                uppers.append(_past(0, v, op == "lt"))
        elif prop == "RowKey" and pk_eq is not None:
            if op in ("eq", "ge", "gt"):
                lo = max(lo, (pk_eq, v))
            if op in ("eq", "le", "lt"):
                uppers.append(_past(1, v, op == "lt"))
    return lo, lambda k: any(u(k) for u in uppers)


def _past(part: int, bound: str, strict: bool) -> Callable[[Key], bool]:
    """A test for keys beyond an upper bound on the PartitionKey (0) or RowKey (1)."""
    if strict:
        return lambda k: k[part] >= bound
    return lambda k: k[part] > bound


# -- the table -------------------------------------------------------------------------------


class _Pages:
    """``by_page()``'s iterator: pages of entities; ``continuation_token`` after each page."""

    def __init__(self, table: MemoryTable, flt: _Filter | None, size: int, token: Mapping[str, Any] | None, select: Any):
        self.table, self.flt, self.size, self.select = table, flt, size, select
        self.continuation_token: dict[str, Any] | None = dict(token) if token else None
        self._started = False

    def __iter__(self) -> _Pages:
        return self

    def __next__(self) -> list[TableEntity]:
        if self._started and self.continuation_token is None:
            raise StopIteration
        self._started = True
        items, self.continuation_token = self.table._page(self.flt, self.size, self.continuation_token, self.select)
        return items


class _Paged:
    """``ItemPaged``: iterate every entity, or ``by_page(continuation_token=…)``."""

    def __init__(self, table: MemoryTable, flt: _Filter | None, size: int | None, select: Any) -> None:
        self.table, self.flt, self.select = table, flt, select
        self.size = min(size or MAX_PAGE, MAX_PAGE)

    def by_page(self, continuation_token: Mapping[str, Any] | None = None) -> _Pages:
        return _Pages(self.table, self.flt, self.size, continuation_token, self.select)

    def __iter__(self) -> Iterator[TableEntity]:
        for page in self.by_page():
            yield from page


_Row = tuple[tuple[str, ...], tuple[Any, ...], int, datetime]
"""A stored entity: property names (shared by every row of that shape), values, write number, time."""


def _props(row: _Row) -> dict[str, Any]:
    return dict(zip(row[0], row[1], strict=True))


def _etag(row: _Row) -> str:
    """The ETag of a write: its time and sequence number, as Azure's weak ``datetime'…'`` ETags."""
    return f"W/\"datetime'{row[3].strftime('%Y-%m-%dT%H%%3A%M%%3A%S.%f')}{row[2]:07d}Z'\""


class MemoryTable:
    """A ``TableClient`` in memory (the methods the table stores call); thread-safe."""

    def __init__(self, name: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.table_name = name
        self.clock = clock
        # A row is compact (10M rows must fit in memory for the scale runs): its property names
        # as one tuple shared by every row of that shape, its values as a tuple, the write's
        # sequence number and time (the ETag is made from these two when asked for), see _Row.
        self._rows: dict[Key, _Row] = {}
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._pk_names: dict[str, str] = {}  # one string object per partition key, not one per row
        # Keys in order, two levels deep (sorted partition keys, and per partition its sorted row
        # keys), each a chunked SortedKeys so that an insert moves one chunk, not the tail of a
        # list of every key (one sorted list of 1M keys costs a 4 MB memmove per insert).
        self._pks = SortedKeys()
        self._rks: dict[str, SortedKeys] = {}
        self._lock = threading.RLock()
        self._n = itertools.count(1)
        self.requests: Counter[str] = Counter()  # entity operations by partition key
        self.rows_read: Counter[str] = Counter()  # entities a query examined, by partition key (what the service reads)
        self.calls: Counter[str] = Counter()  # HTTP requests (a page, a transaction: one) by partition key
        self.entities: Counter[str] = Counter()  # entities written, read or scanned, by partition key

    # -- helpers

    def _entity(self, key: Key, select: Any = None) -> TableEntity:
        row = self._rows[key]
        out = TableEntity({"PartitionKey": key[0], "RowKey": key[1], **_props(row)})
        if select:
            out = TableEntity({k: v for k, v in out.items() if k in select})
        out._metadata = {"etag": _etag(row), "timestamp": row[3]}
        return out

    def _props(self, entity: Mapping[str, Any]) -> tuple[Key, dict[str, Any]]:
        pk = _check_key("PartitionKey", entity.get("PartitionKey"))
        key = (self._pk_names.setdefault(pk, pk), _check_key("RowKey", entity.get("RowKey")))
        props = {k: _stored_value(k, v) for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}
        return key, props

    def _put(self, rows: dict[Key, Any], key: Key, props: dict[str, Any]) -> dict[str, Any]:
        names = tuple(props)
        row: _Row = (self._shapes.setdefault(names, names), tuple(props.values()), next(self._n), self.clock())
        rows[key] = row
        return {"etag": _etag(row), "date": row[3]}

    def _apply(self, rows: dict[Key, Any], op: str, entity: Mapping[str, Any], kw: Mapping[str, Any]) -> dict[str, Any]:
        """One write against ``rows`` (the table, or a transaction's copy); raises the SDK's errors."""
        if op == "delete":
            key = (str(entity["PartitionKey"]), str(entity["RowKey"]))
            if key not in rows:
                raise _error(ResourceNotFoundError, 404, "ResourceNotFound", "The specified resource does not exist.")
            self._check_etag(rows, key, kw)
            del rows[key]
            return {}
        key, props = self._props(entity)
        mode = kw.get("mode", UpdateMode.MERGE)
        if op == "create":
            if key in rows:
                raise _error(ResourceExistsError, 409, "EntityAlreadyExists", "The specified entity already exists.")
        elif op == "update":
            if key not in rows:
                raise _error(ResourceNotFoundError, 404, "ResourceNotFound", "The specified resource does not exist.")
            self._check_etag(rows, key, kw)
        elif op != "upsert":
            raise ValueError(f"unknown transaction operation {op!r}")
        if op in ("update", "upsert") and mode == UpdateMode.MERGE and key in rows:
            props = {**_props(rows[key]), **props}
        return self._put(rows, key, props)

    @staticmethod
    def _check_etag(rows: dict[Key, Any], key: Key, kw: Mapping[str, Any]) -> None:
        if kw.get("match_condition") == MatchConditions.IfNotModified and kw.get("etag") != _etag(rows[key]):
            raise _error(
                ResourceModifiedError,
                412,
                "UpdateConditionNotSatisfied",
                "The update condition specified in the request was not satisfied.",
            )

    def _commit(self, rows: dict[Key, Any]) -> None:
        """Make ``rows`` (a transaction's copy of some keys) the table's, keeping the keys sorted."""
        for key, value in rows.items():
            pk, rk = key
            if value is None:
                if key in self._rows:
                    del self._rows[key]
                    rks = self._rks[pk]
                    rks.remove(rk)
                    if not rks:
                        del self._rks[pk]
                        self._pks.remove(pk)
            else:
                if key not in self._rows:
                    part = self._rks.get(pk)
                    if part is None:
                        part = self._rks[pk] = SortedKeys()
                        self._pks.add(pk)
                    part.add(rk)
                self._rows[key] = value

    def _keys_from(self, lo: Key) -> Iterator[Key]:
        """Every key at or above ``lo``, in (PartitionKey, RowKey) order."""
        for pk in self._pks.iter_from(lo[0]):
            for rk in self._rks[pk].iter_from(lo[1] if pk == lo[0] else ""):
                yield pk, rk

    def _write(self, op: str, entity: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
        with self._lock:
            pk = str(entity.get("PartitionKey"))
            self.requests[pk] += 1
            self.calls[pk] += 1
            self.entities[pk] += 1
            rows = _Overlay(self._rows)
            result = self._apply(rows, op, entity, kw)
            self._commit(rows.changes)
            return result

    def _page(
        self, flt: _Filter | None, size: int, token: Mapping[str, Any] | None, select: Any
    ) -> tuple[list[TableEntity], dict[str, Any] | None]:
        with self._lock:
            lo, past = _key_range(flt.bounds if flt else [])
            if token:
                lo = max(lo, (str(token.get("PartitionKey") or ""), str(token.get("RowKey") or "")))
            out: list[TableEntity] = []
            for key in self._keys_from(lo):
                if past(key):
                    break
                if len(out) == size:
                    self.requests[lo[0]] += 1
                    self.calls[lo[0]] += 1
                    return out, {"PartitionKey": key[0], "RowKey": key[1]}
                self.rows_read[key[0]] += 1
                self.entities[key[0]] += 1  # scanned: the service walks it whether or not the filter keeps it
                entity = self._entity(key)
                if flt is None or flt.predicate(entity):
                    out.append(self._entity(key, select) if select else entity)
            self.requests[lo[0]] += 1
            self.calls[lo[0]] += 1
            return out, None

    # -- the TableClient surface

    def create_table(self) -> None:
        return None

    def get_entity(self, partition_key: str, row_key: str, **kw: Any) -> TableEntity:
        with self._lock:
            self.requests[partition_key] += 1
            self.rows_read[partition_key] += 1
            self.calls[partition_key] += 1
            self.entities[partition_key] += 1
            key = (partition_key, row_key)
            if key not in self._rows:
                raise _error(ResourceNotFoundError, 404, "ResourceNotFound", "The specified resource does not exist.")
            return self._entity(key, kw.get("select"))

    def create_entity(self, entity: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
        return self._write("create", entity)

    def upsert_entity(self, entity: Mapping[str, Any], mode: UpdateMode = UpdateMode.MERGE, **kw: Any) -> dict[str, Any]:
        return self._write("upsert", entity, mode=mode)

    def update_entity(self, entity: Mapping[str, Any], mode: UpdateMode = UpdateMode.MERGE, **kw: Any) -> dict[str, Any]:
        return self._write("update", entity, mode=mode, **kw)

    def delete_entity(self, *args: Any, **kw: Any) -> None:
        if len(args) == 2:
            entity: Mapping[str, Any] = {"PartitionKey": args[0], "RowKey": args[1]}
        else:
            entity = args[0] if args else {"PartitionKey": kw.pop("partition_key"), "RowKey": kw.pop("row_key")}
            if not kw.get("etag") and isinstance(entity, TableEntity):
                kw.setdefault("etag", entity.metadata.get("etag"))
        try:
            self._write("delete", entity, **kw)
        except ResourceNotFoundError:
            return None  # the SDK swallows 404 on delete

    def query_entities(
        self, query_filter: str, *, parameters: Mapping[str, Any] | None = None, results_per_page: int | None = None, **kw: Any
    ) -> _Paged:
        return _Paged(self, _Filter(query_filter, parameters or {}), results_per_page, kw.get("select"))

    def list_entities(self, *, results_per_page: int | None = None, **kw: Any) -> _Paged:
        return _Paged(self, None, results_per_page, kw.get("select"))

    def submit_transaction(self, operations: Sequence[Any], **kw: Any) -> list[dict[str, Any]]:
        ops = [(op[0], op[1], op[2] if len(op) > 2 else {}) for op in operations]
        if not ops:
            return []
        if len(ops) > MAX_BATCH:
            raise self._tx_error(0, "InvalidInput", f"{len(ops)} operations: a transaction holds at most {MAX_BATCH}")
        pks = {str(e.get("PartitionKey")) for _, e, _ in ops}
        if len(pks) != 1:
            raise ValueError("Partition Keys in the batch must all be the same.")  # as the SDK, before sending
        rks = [str(e.get("RowKey")) for _, e, _ in ops]
        if len(set(rks)) != len(rks):
            raise self._tx_error(0, "InvalidDuplicateRow", "a transaction names one entity at most once")
        with self._lock:
            pk = pks.pop()
            self.requests[pk] += len(ops)
            self.calls[pk] += 1
            self.entities[pk] += len(ops)
            rows = _Overlay(self._rows)
            results = []
            for index, (op, entity, opkw) in enumerate(ops):
                try:
                    results.append(self._apply(rows, op, entity, opkw))
                except HttpResponseError as exc:
                    raise self._tx_error(index, str(getattr(exc, "error_code", "")), str(exc.message)) from None
            self._commit(rows.changes)  # all or nothing
            return results

    @staticmethod
    def _tx_error(index: int, code: str, message: str) -> TableTransactionError:
        exc = TableTransactionError(message=f"{index}:{message}", index=index)
        exc.error_code = code  # type: ignore[attr-defined]
        exc.status_code = 400
        return exc


class _Overlay(dict[Key, Any]):
    """A transaction's view of the table: reads fall through to it, writes stay here until commit."""

    _gone = object()

    def __init__(self, base: dict[Key, Any]) -> None:
        super().__init__()
        self.base = base

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return dict.get(self, key) is not self._gone  # type: ignore[misc]
        return key in self.base

    def __getitem__(self, key: Key) -> Any:
        if dict.__contains__(self, key):
            value = dict.__getitem__(self, key)
            if value is self._gone:
                raise KeyError(key)
            return value
        return self.base[key]

    def __delitem__(self, key: Key) -> None:
        dict.__setitem__(self, key, self._gone)

    @property
    def changes(self) -> dict[Key, Any]:
        return {k: (None if v is self._gone else v) for k, v in dict.items(self)}


class MemoryTables:
    """Stands in for :class:`corpus.store.storage.Clients` where only tables are asked for."""

    def __init__(self) -> None:
        self._tables: dict[str, MemoryTable] = {}
        self._lock = threading.Lock()

    def table_client(self, name: str) -> MemoryTable:
        with self._lock:
            return self._tables.setdefault(name, MemoryTable(name))

    def ensure(self, containers: tuple[str, ...] = (), queues: tuple[str, ...] = (), tables: tuple[str, ...] = ()) -> None:
        """Tables exist on first use; containers and queues are the ports' business."""
        for name in tables:
            self.table_client(name)

    def requests(self) -> Counter[str]:
        """Entity operations by ``table/partition`` across every table."""
        return self._by_partition("requests")

    def calls(self) -> Counter[str]:
        """HTTP requests (a query page, a transaction: one each) by ``table/partition``."""
        return self._by_partition("calls")

    def entities(self) -> Counter[str]:
        """Entities written, read or scanned by ``table/partition``: what Azure's per-partition
        target (2,000 entities/s) is stated in."""
        return self._by_partition("entities")

    def _by_partition(self, what: str) -> Counter[str]:
        total: Counter[str] = Counter()
        with self._lock:
            tables = list(self._tables.items())
        for name, table in tables:
            for pk, n in getattr(table, what).items():
                total[f"{name}/{pk}"] += n
        return total
