"""Query Entities without the SDK's generic deserialiser: the JSON page is decoded in a few lines.

``TableClient.query_entities`` reads each 1,000-entity page through the generated client's
model deserialiser (a recursive walk over every value of every entity), then converts each
entity with ``_convert_to_entity``, whose date-times go through ``time.strptime``. For the
training-set build that was most of the CPU left after the lean batch encoder (issue 26:
``deserialize_data`` 5.7 s, ``_convert_to_entity`` 4.6 s, ``_strptime`` 1.8 s for 20,000 rows).
Here:

* the request is the SDK's own (``build_table_query_entities_request``: the same URL, ``$filter``
  with the SDK's parameter substitution, ``$select``, ``$top``, headers, ``Accept:
  application/json;odata=minimalmetadata``, so Int64, DateTime, Binary and Guid values carry their
  ``@odata.type`` annotations) and goes through the client's own pipeline (signing, retries, the
  shared session);
* the reply is ``json.loads`` d and each entity converted by :func:`to_entity`, which gives the
  same typed :class:`~azure.data.tables.TableEntity` as the SDK's ``_convert_to_entity`` (same
  keys in the same order, same value types, same metadata); only its date-times are parsed with
  ``datetime.fromisoformat`` (Python 3.11 reads the service's 7-digit fraction, truncating to
  microseconds as the SDK does) when they have the service's shape, and by the SDK's own parser
  otherwise. ``tests/test_tablequery.py`` checks it against the SDK for generated entities
  (hypothesis), and on Azurite against ``query_entities`` itself;
* pages follow the continuation headers (``x-ms-continuation-NextPartitionKey`` /
  ``-NextRowKey``) exactly as the SDK's pager does: the next request carries whichever of them
  the reply had, and the query ends on a reply with neither;
* any reply but ``200`` (after the pipeline's retries) is replayed through the SDK's own pager
  for that page, which raises the SDK's typed error (``ResourceNotFoundError`` for a missing
  table…) or, if the condition has passed, returns the page: a query changes nothing, so the
  replay is safe, and callers keep their error handling.

Anything that is not a real ``TableClient`` (the in-memory tables) is passed straight to its
``query_entities``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC
from typing import Any

from azure.data.tables import EdmType, EntityProperty, TableClient, TableEntity
from azure.data.tables._deserialize import _ENTITY_TO_PYTHON_CONVERSIONS, TablesEntityDatetime
from azure.data.tables._deserialize import _from_entity_datetime as _sdk_datetime
from azure.data.tables._deserialize import url_quote as _sdk_quote
from azure.data.tables._generated.operations._operations import build_table_query_entities_request
from azure.data.tables._serialize import _parameter_filter_substitution

NEXT_PARTITION_KEY = "x-ms-continuation-NextPartitionKey"
NEXT_ROW_KEY = "x-ms-continuation-NextRowKey"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31
_DATETIME = EdmType.DATETIME.value
_UNCONVERTED = frozenset({EdmType.STRING.value, EdmType.INT32.value})
_CONVERT: dict[str, Callable[[Any], Any]] = {str(k.value): v for k, v in _ENTITY_TO_PYTHON_CONVERSIONS.items()}  # type: ignore[misc]
_from_entity_datetime: Callable[[Any], Any] = _sdk_datetime
url_quote: Callable[[str], str] = _sdk_quote
_SERVICE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?Z\Z")
"""The shape the service writes (``2026-12-05T13:32:00.1234567Z``): for it, ``fromisoformat``
and the SDK's ``strptime`` agree (both truncate the fraction to 6 digits, both refuse hour 24 or
second 60). Anything else goes to the SDK's parser."""


def parse_datetime(value: str) -> Any:
    """The SDK's ``_from_entity_datetime(value)``: a UTC :class:`TablesEntityDatetime` that
    remembers the service's string (``tables_service_value``), without ``strptime``."""
    if _SERVICE_TIME.match(value):
        try:
            parsed = TablesEntityDatetime.fromisoformat(value)
        except ValueError:
            return _from_entity_datetime(value)  # the SDK's own error for it
        if parsed.tzinfo is not UTC:  # pragma: no cover - "…Z" is always UTC
            parsed = parsed.replace(tzinfo=UTC)
        parsed._service_value = value  # type: ignore[attr-defined]  # the attribute the SDK sets
        return parsed
    return _from_entity_datetime(value)


def to_entity(raw: Mapping[str, Any]) -> TableEntity:
    """One entity of a ``minimalmetadata`` JSON page as the SDK's ``_convert_to_entity`` returns it."""
    entity = TableEntity()
    properties: list[tuple[str, Any]] = []
    types: dict[str, Any] = {}
    odata: dict[str, Any] = {}
    for name, value in raw.items():
        if "." not in name:  # the common case: a property (both annotations have a dot)
            properties.append((name, value))
        elif name.startswith("odata."):
            odata[name[6:]] = value
        elif name.endswith("@odata.type"):
            types[name[:-11]] = value
        else:
            properties.append((name, value))
    found = dict(properties)
    partition_key = found.get("PartitionKey")
    if partition_key is not None:
        entity["PartitionKey"] = partition_key
    row_key = found.get("RowKey")
    if row_key is not None:
        entity["RowKey"] = row_key
    timestamp = found.get("Timestamp")
    for name, value in properties:
        if name in ("PartitionKey", "RowKey", "Timestamp"):
            continue
        mtype = types.get(name)
        if mtype is None:
            if isinstance(value, int) and not _INT32_MIN <= value < _INT32_MAX:
                entity[name] = EntityProperty(int(value), EdmType.INT64)  # what the SDK infers
            else:
                entity[name] = value  # str, Int32, bool, double, null: as JSON gave them
        elif mtype in _UNCONVERTED or not mtype:
            entity[name] = value
        elif mtype == _DATETIME and isinstance(value, str):
            entity[name] = parse_datetime(value)
        else:
            convert = _CONVERT.get(mtype)
            entity[name] = convert(value) if convert is not None else EntityProperty(mtype, value)
    etag = odata.pop("etag", None)
    odata.pop("metadata", None)
    if timestamp:
        if not etag:
            etag = "W/\"datetime'" + url_quote(timestamp) + "'\""
        timestamp = parse_datetime(timestamp) if isinstance(timestamp, str) else _from_entity_datetime(timestamp)
    odata.update({"etag": etag, "timestamp": timestamp})
    entity._metadata = odata  # type: ignore[assignment]  # where the SDK keeps it
    return entity


def decode_page(body: bytes) -> list[TableEntity]:
    """The entities of one Query Entities reply body (``{"odata.metadata": …, "value": [...]}``)."""
    return [to_entity(raw) for raw in json.loads(body).get("value") or ()]


def _select(select: str | list[str] | None) -> str | None:
    if isinstance(select, list):
        return ",".join(select) if select else None
    return select


def query_entities(
    table: Any,
    query_filter: str,
    *,
    parameters: dict[str, Any] | None = None,
    select: str | list[str] | None = None,
    results_per_page: int | None = None,
) -> Iterator[Any]:
    """``table.query_entities(query_filter, parameters=…, select=…, results_per_page=…)``, the
    same entities in the same order, decoded leanly (see the module)."""
    if not isinstance(table, TableClient):
        yield from table.query_entities(query_filter, parameters=parameters, select=select, results_per_page=results_per_page)
        return
    flt = _parameter_filter_substitution(parameters, query_filter)
    selected = _select(select)
    token: dict[str, Any] | None = None
    while True:
        next_pk, next_rk = (token.get("PartitionKey"), token.get("RowKey")) if token else (None, None)
        request = build_table_query_entities_request(
            table=table.table_name,
            top=results_per_page,
            select=selected,
            filter=flt,
            next_partition_key=next_pk,
            next_row_key=next_rk,
            version=table._client._config.version,  # the SDK's own client, API version and pipeline
        )
        response = table._client.send_request(request)
        if response.status_code == 200:
            entities = decode_page(response.read())
            pk, rk = response.headers.get(NEXT_PARTITION_KEY), response.headers.get(NEXT_ROW_KEY)
            token = {"PartitionKey": pk, "RowKey": rk} if pk or rk else None
        else:
            entities, token = _sdk_page(table, flt, selected, results_per_page, token)
        yield from entities
        if token is None:
            return


def _sdk_page(
    table: TableClient, flt: str, select: str | None, per_page: int | None, token: dict[str, Any] | None
) -> tuple[list[TableEntity], dict[str, Any] | None]:
    """The same page through the SDK's pager: its typed error, or the page if the failure passed."""
    pages: Any = table.query_entities(flt, select=select, results_per_page=per_page).by_page(continuation_token=token)  # type: ignore[arg-type]
    page = list(next(pages, []))
    return page, pages.continuation_token or None
