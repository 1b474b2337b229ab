"""The lean entity-group-transaction encoder writes the SDK's bytes, and behaves as the SDK on Azurite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.rest import HttpRequest
from azure.data.tables import EdmType, EntityProperty, TableClient, TableTransactionError, UpdateMode
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.store import egt
from corpus.store.settings import Settings
from corpus.store.storage import Clients

DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONN = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"

keys_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\#?'"), min_size=1, max_size=40)
values = st.one_of(
    st.text(max_size=60),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.integers(min_value=2**31, max_value=2**62).map(lambda n: EntityProperty(n, EdmType.INT64)),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=30),
    st.datetimes(min_value=datetime(1970, 1, 2), timezones=st.just(UTC)),
)
props = st.dictionaries(st.from_regex(r"\A[A-Za-z][A-Za-z0-9]{0,15}\Z"), values, max_size=6)


@st.composite
def operations(draw: Any) -> list[Any]:
    pk = draw(keys_text)
    ops: list[Any] = []
    for rk in draw(st.lists(keys_text, min_size=1, max_size=12, unique=True)):
        entity = {**draw(props), "PartitionKey": pk, "RowKey": rk}
        kind = draw(st.sampled_from(["create", "upsert-merge", "upsert-replace", "update-merge", "update-etag", "delete"]))
        if kind == "create":
            ops.append(("create", entity))
        elif kind.startswith("upsert"):
            ops.append(("upsert", entity, {"mode": UpdateMode.MERGE if kind.endswith("merge") else UpdateMode.REPLACE}))
        elif kind == "update-merge":
            ops.append(("update", entity, {"mode": UpdateMode.MERGE}))
        elif kind == "update-etag":
            from azure.core import MatchConditions

            ops.append(
                (
                    "update",
                    entity,
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": "W/\"datetime'2026-01-01T00%3A00%3A00Z'\"",
                        "match_condition": MatchConditions.IfNotModified,
                    },
                )
            )
        else:
            ops.append(("delete", {"PartitionKey": pk, "RowKey": rk}))
    return ops


def sdk_body(reqs: list[HttpRequest], batch: str, changeset: str) -> bytes:
    """What ``TableClient._batch_send`` puts on the wire for these sub-requests (its own framing)."""
    cs = HttpRequest("POST", "")
    cs.set_multipart_mixed(*reqs, policies=[], boundary=changeset)
    req = HttpRequest("POST", "http://127.0.0.1:10002/devstoreaccount1/$batch")
    req.set_multipart_mixed(cs, policies=[], enforce_https=False, boundary=batch)
    req.prepare_multipart_body()
    body = req.content
    assert isinstance(body, bytes)
    return body


@settings(max_examples=80, deadline=None)
@given(ops=operations(), table=st.from_regex(r"\A[A-Za-z][A-Za-z0-9]{2,20}\Z"))
def test_the_lean_body_is_the_sdks_byte_for_byte(ops: list[Any], table: str) -> None:
    client = TableClient.from_connection_string(CONN, table)
    reqs = egt.operation_requests(client, ops)
    mine = egt.encode_batch(
        "batch_b1", "changeset_c1", [egt.serialize_part(r.method, r.url, r.headers, egt._body(r)) for r in reqs]
    )
    assert mine == sdk_body(reqs, "batch_b1", "changeset_c1")


def test_status_lines_decide_success() -> None:
    ok = (
        b"--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: application/http\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n--c\r\n\r\nHTTP/1.1 201 Created\r\n\r\n--c--\r\n--b--"
    )
    assert egt.accepted(202, ok, 2)
    assert not egt.accepted(202, ok, 3)  # a part missing
    assert not egt.accepted(202, ok.replace(b"201 Created", b"409 Conflict"), 2)
    assert not egt.accepted(400, ok, 2)


@pytest.mark.e2e
def test_on_azurite_rows_land_and_a_failure_is_the_sdks_error(settings: Settings) -> None:
    table = Clients(settings.connection).table_client("Egt")
    table.create_table()
    rows = [{"PartitionKey": "p", "RowKey": f"r{i:03}", "N": i, "S": "é" * i} for i in range(100)]
    egt.submit(table, [("create", r) for r in rows])
    got = {e["RowKey"]: (e["N"], e["S"]) for e in table.query_entities("PartitionKey eq 'p'")}
    assert got == {r["RowKey"]: (r["N"], r["S"]) for r in rows}

    egt.submit(table, [("upsert", {"PartitionKey": "p", "RowKey": "r001", "N": 7}, {"mode": UpdateMode.MERGE})])
    assert table.get_entity("p", "r001")["S"] == "é"  # merged, not replaced
    with pytest.raises(TableTransactionError) as err:
        egt.submit(
            table, [("create", {"PartitionKey": "p", "RowKey": "new"}), ("create", {"PartitionKey": "p", "RowKey": "r005"})]
        )
    assert "EntityAlreadyExists" in str(err.value.error_code)
    assert not list(table.query_entities("PartitionKey eq 'p' and RowKey eq 'new'"))  # all or nothing
