"""The lean Query Entities reader returns the SDK's typed entities, pages as the SDK does, fails as it does."""

from __future__ import annotations

import base64
import itertools
import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, TableClient, TableEntity
from azure.data.tables._deserialize import _convert_to_entity as _sdk_convert
from azure.data.tables._generated import models as generated_models
from azure.data.tables._generated._serialization import Deserializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus.store import tablequery
from corpus.store.memory_tables import MemoryTable
from corpus.store.storage import Clients

_names = itertools.count()
_convert_to_entity: Callable[[Any], TableEntity] = _sdk_convert
_SDK = Deserializer({k: v for k, v in vars(generated_models).items() if isinstance(v, type)})


def sdk_page(body: bytes) -> list[TableEntity]:
    """What ``TableEntityPropertiesPaged`` makes of a reply body: the generated model's
    deserialiser, then ``_convert_to_entity`` per entity."""
    response = _SDK("TableEntityQueryResponse", json.loads(body))
    return [_convert_to_entity(t) for t in response.value]


def typed(entity: TableEntity) -> tuple[Any, ...]:
    """Everything that makes two entities the same typed row: keys in order, each value's type and
    value (NaN as itself), the service string of date-times, and the metadata."""

    def one(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return ("nan",)
        if isinstance(v, EntityProperty):
            return ("prop", one(v.value), str(v.edm_type))
        if isinstance(v, datetime):
            return (v, v.tzinfo, getattr(v, "tables_service_value", None))
        return v

    props = tuple((k, type(v).__name__, one(v)) for k, v in entity.items())
    meta = tuple((k, type(v).__name__, one(v)) for k, v in entity.metadata.items())
    return props, meta


# -- a service's minimalmetadata page, generated ------------------------------------------------

digits = st.text("0123456789", min_size=0, max_size=9)


@st.composite
def service_times(draw: Any) -> str:
    """Date-times as the service writes them (7-digit fraction), and the shapes around it."""
    moment = draw(st.datetimes(min_value=datetime(1601, 1, 1), max_value=datetime(9999, 12, 31)))
    base: str = moment.strftime("%Y-%m-%dT%H:%M:%S")
    kind = draw(st.sampled_from(["7", "any", "none", "odd"]))
    if kind == "7":
        return f"{base}.{moment.microsecond:06d}{draw(st.integers(0, 9))}Z"
    if kind == "any":
        return f"{base}.{draw(digits.filter(bool))}Z"
    if kind == "none":
        return base + "Z"
    odd = [base + "+00:00", base.replace("T", " ") + "Z", base[:-3] + "Z", base + ".Z", "2026-12-05T24:00:00Z"]
    return str(draw(st.sampled_from(odd)))


typed_values = st.one_of(
    st.tuples(st.just("Edm.Int64"), st.integers(-(2**63), 2**63 - 1).map(str)),
    st.tuples(st.just("Edm.DateTime"), service_times()),
    st.tuples(st.just("Edm.Binary"), st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())),
    st.tuples(st.just("Edm.Guid"), st.uuids().map(str)),
    st.tuples(st.just("Edm.Double"), st.one_of(st.floats(allow_nan=False), st.sampled_from(["NaN", "Infinity", "-Infinity"]))),
    st.tuples(st.just("Edm.Int32"), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just("Edm.String"), st.text(max_size=20)),
    st.tuples(st.just("Edm.Boolean"), st.booleans()),
)
plain_values = st.one_of(
    st.text(max_size=60),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(2**31, 2**70),  # no annotation: the SDK infers Int64
    st.integers(-(2**70), -(2**31) - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
)
names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z").filter(lambda n: n not in ("PartitionKey", "RowKey", "Timestamp"))


@st.composite
def raw_entities(draw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if draw(st.booleans()):
        raw["odata.etag"] = "W/\"datetime'" + draw(st.text("0123456789%ATZ:-.", max_size=30)) + "'\""
    raw["PartitionKey"] = draw(st.text(max_size=20))
    raw["RowKey"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        raw["Timestamp"] = draw(service_times())
    for name in draw(st.lists(names, max_size=8, unique=True)):
        if draw(st.booleans()):
            edm, value = draw(typed_values)
            if draw(st.booleans()):
                raw[name + "@odata.type"] = edm
                raw[name] = value
            else:  # the annotation after the value: order must not matter
                raw[name] = value
                raw[name + "@odata.type"] = edm
        else:
            raw[name] = draw(plain_values)
    return raw


@settings(max_examples=300)
@given(page=st.lists(raw_entities(), max_size=6))
def test_decoding_a_page_gives_the_sdks_typed_entities(page: list[dict[str, Any]]) -> None:
    body = json.dumps({"odata.metadata": "http://x/$metadata#T", "value": page}).encode()
    try:
        expected = [typed(e) for e in sdk_page(body)]
    except ValueError as sdk_error:  # a date-time the SDK refuses: refused alike
        with pytest.raises(type(sdk_error)):
            tablequery.decode_page(body)
        return
    assert [typed(e) for e in tablequery.decode_page(body)] == expected


@pytest.mark.parametrize(
    "value",
    ["2026-12-05T13:32:00.1234567Z", "2026-12-05T13:32:00Z", "2026-12-05T13:32:00.1Z", "0001-01-01T00:00:00.0000000Z"],
)
def test_service_times_parse_as_the_sdk_parses_them(value: str) -> None:
    mine, sdk = tablequery.parse_datetime(value), tablequery._from_entity_datetime(value)
    assert (mine, type(mine), mine.tzinfo, mine.tables_service_value) == (sdk, type(sdk), sdk.tzinfo, value)


# -- on Azurite and on the in-memory table --------------------------------------------------------


def new_table(clients: Clients) -> TableClient:
    name = f"Lean{next(_names)}"
    clients.ensure(tables=(name,))
    table: TableClient = clients.table_client(name)
    return table


entity_values = st.one_of(
    st.text(max_size=60),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda n: EntityProperty(n, EdmType.INT64)),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(min_size=1, max_size=30),
    st.datetimes(min_value=datetime(1970, 1, 2), timezones=st.just(UTC)),
    st.uuids(),
)
key_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\#?'"), min_size=1, max_size=30)


@pytest.mark.e2e
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(key_text, st.dictionaries(st.from_regex(r"\A[A-Za-z][A-Za-z0-9]{0,15}\Z"), entity_values, max_size=6)),
        min_size=1,
        max_size=12,
        unique_by=lambda r: r[0],
    ),
    per_page=st.sampled_from([None, 1, 5]),
)
def test_on_azurite_the_lean_query_returns_what_the_sdk_returns(
    azurite_clients: Clients, rows: list[tuple[str, dict[str, Any]]], per_page: int | None
) -> None:
    table = new_table(azurite_clients)
    for i, (rk, props) in enumerate(rows):
        table.create_entity({**props, "PartitionKey": f"p{i % 2}", "RowKey": rk})
    for flt, params in (("PartitionKey eq @pk", {"pk": "p0"}), ("PartitionKey ge @lo", {"lo": ""})):
        sdk = [typed(e) for e in table.query_entities(flt, parameters=params, results_per_page=per_page)]
        lean = [typed(e) for e in tablequery.query_entities(table, flt, parameters=params, results_per_page=per_page)]
        assert lean == sdk
    table.delete_table()


@pytest.fixture(params=["memory", "azurite"])
def table(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryTable(f"Lean{next(_names)}")
    return new_table(request.getfixturevalue("azurite_clients"))


def test_pages_of_1000_follow_the_continuation_across_partitions(table: Any) -> None:
    """Both continuation headers (NextPartitionKey and NextRowKey) are carried as the SDK carries
    them: a 2,500-entity query over three partitions comes back whole and in key order."""
    for pk, count in (("a", 1005), ("b", 1490), ("c", 5)):
        for start in range(0, count, 100):
            table.submit_transaction(
                [("upsert", {"PartitionKey": pk, "RowKey": f"{i:05d}", "N": i}) for i in range(start, min(start + 100, count))]
            )
    everything = [
        (e["PartitionKey"], e["RowKey"], e["N"])
        for e in tablequery.query_entities(table, "PartitionKey ge @lo", parameters={"lo": "a"})
    ]
    assert len(everything) == 2500 and everything == sorted(everything)
    assert everything == [
        (e["PartitionKey"], e["RowKey"], e["N"]) for e in table.query_entities("PartitionKey ge @lo", parameters={"lo": "a"})
    ]
    ranged = tablequery.query_entities(
        table, "PartitionKey eq @pk and RowKey gt @after", parameters={"pk": "b", "after": "01480"}, select=["RowKey"]
    )
    assert [dict(e) for e in ranged] == [{"RowKey": f"{i:05d}"} for i in range(1481, 1490)]
    stamped = next(iter(tablequery.query_entities(table, "PartitionKey eq @pk", parameters={"pk": "c"})))
    assert stamped.metadata["etag"] and isinstance(stamped.metadata["timestamp"], datetime)


def test_a_missing_table_is_the_sdks_error(azurite_clients: Clients) -> None:
    table = azurite_clients.table_client(f"Missing{next(_names)}")
    with pytest.raises(ResourceNotFoundError):
        list(tablequery.query_entities(table, "PartitionKey eq @pk", parameters={"pk": "x"}))


def test_a_non_200_page_is_replayed_through_the_sdk(azurite_clients: Clients, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply the lean path does not read (here a forced 503 after the pipeline's retries) is
    asked again through the SDK's pager, and the query carries on from that page's token."""
    table = new_table(azurite_clients)
    table.submit_transaction([("create", {"PartitionKey": "p", "RowKey": f"{i:02d}", "G": uuid.uuid4()}) for i in range(12)])
    real, replays = table._client.send_request, []
    calls = itertools.count()

    class Unavailable:
        status_code = 503

    def flaky(request: Any, **kwargs: Any) -> Any:
        response = real(request, **kwargs)
        return Unavailable() if next(calls) == 1 else response  # the second page

    sdk_query = table.query_entities

    def counted(*args: Any, **kwargs: Any) -> Any:
        replays.append(args)
        return sdk_query(*args, **kwargs)

    monkeypatch.setattr(table._client, "send_request", flaky)
    monkeypatch.setattr(table, "query_entities", counted)
    got = [
        e["RowKey"] for e in tablequery.query_entities(table, "PartitionKey eq @pk", parameters={"pk": "p"}, results_per_page=5)
    ]
    assert got == [f"{i:02d}" for i in range(12)]
    assert next(calls) == 3 and replays == [("PartitionKey eq 'p'",)], "pages 1 and 3 lean, page 2 by the SDK"
