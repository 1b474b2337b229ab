"""Entity-group transactions without the ``email`` package: the multipart body is a few lines.

``TableClient.submit_transaction`` frames its ``$batch`` body with ``email.message`` (each
operation serialised through a fake ``http.client`` connection, then flattened by the email
generator) and parses the reply with ``email.parser`` plus a thread pool per response. For the
training-set build that framing was 74 % of the CPU (issue 26). Here:

* the operations are still built by the SDK (:class:`TableBatchOperations`: URLs, OData types,
  ``If-Match``, ``Prefer``), so their semantics are the SDK's;
* :func:`encode_batch` writes the same bytes the SDK writes (``tests/test_egt.py`` checks it byte for
  byte against the SDK's own encoding, for generated operations);
* the request goes through the client's own pipeline (signing, retries, the shared session);
* the reply is read for its status lines only. Success is ``202`` with every part ``2xx``.
  Anything else is replayed through ``submit_transaction``, which raises the SDK's typed error
  (``TableTransactionError`` with the failing index…): a failed transaction changed nothing
  (all or nothing), so the replay meets the same state, and callers keep their error handling.

Anything that is not a real ``TableClient`` (the in-memory tables) is passed straight to its
``submit_transaction``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient
from azure.data.tables._policies import StorageHeadersPolicy
from azure.data.tables._table_batch import TableBatchOperations

_CRLF = b"\r\n"
_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_ETAG = re.compile(rb"^etag:[ \t]*(.+?)\r?$", re.MULTILINE | re.IGNORECASE)
_METHODS_WITH_BODY = frozenset({"PATCH", "POST", "PUT"})


def serialize_part(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
    """One operation as ``application/http``, as ``http.client`` would put it on a wire (what the
    SDK's serializer does): request line, ``Content-Length`` unless given, the headers but ``Host``
    and ``Accept-Encoding``, a blank line, the body."""
    lines = [f"{method} {url} HTTP/1.1".encode("latin-1")]
    names = {k.lower() for k in headers}
    if "content-length" not in names and "transfer-encoding" not in names:
        if body is not None:
            lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
        elif method.upper() in _METHODS_WITH_BODY:
            lines.append(b"Content-Length: 0")
    for name, value in headers.items():
        if name not in ("Host", "Accept-Encoding"):
            lines.append(name.encode("ascii") + b": " + str(value).encode("latin-1"))
    return _CRLF.join(lines) + _CRLF + _CRLF + (body or b"")


def encode_batch(batch_boundary: str, changeset_boundary: str, parts: Sequence[bytes]) -> bytes:
    """The ``$batch`` body: one changeset holding ``parts`` (each from :func:`serialize_part`)."""
    cs = changeset_boundary.encode("ascii")
    out = [
        b"--" + batch_boundary.encode("ascii") + _CRLF,
        b"Content-Type: multipart/mixed; boundary=" + cs + _CRLF + _CRLF,
    ]
    for index, part in enumerate(parts):
        out.append(b"--" + cs + _CRLF)
        out.append(b"Content-Type: application/http" + _CRLF + b"Content-Transfer-Encoding: binary" + _CRLF)
        out.append(b"Content-ID: " + str(index).encode("ascii") + _CRLF + _CRLF)
        out.append(part + _CRLF)
    out.append(b"--" + cs + b"--" + _CRLF + _CRLF)
    out.append(b"--" + batch_boundary.encode("ascii") + b"--" + _CRLF)
    return b"".join(out)


def _body(request: HttpRequest) -> bytes | None:
    content = request.content
    if content is None:
        return None
    if isinstance(content, str):
        return content.encode("latin-1")
    if isinstance(content, bytes):
        return content
    raise TypeError(f"an entity-group operation with a {type(content).__name__} body")


def operation_requests(table: TableClient, operations: Iterable[Any]) -> list[HttpRequest]:
    """The SDK's own sub-requests for ``operations``, with the headers its batch policy adds."""
    batch = TableBatchOperations(
        config=table._client._config,
        endpoint=f"{table.scheme}://{table._primary_hostname}",
        table_name=table.table_name,
        is_cosmos_endpoint=table._cosmos_endpoint,
    )
    for operation in operations:
        batch.add_operation(operation)
    policy = StorageHeadersPolicy()
    for req in batch.requests:
        policy.on_request(PipelineRequest(req, PipelineContext(None)))
    return list(batch.requests)


def submit(table: Any, operations: Sequence[Any]) -> list[Mapping[str, Any]]:
    """``table.submit_transaction(operations)``, framed and read without ``email`` (see the module).

    Returns each operation's metadata as the SDK does, of which only ``etag`` is filled here (from
    its sub-response's ``ETag`` header; absent for a delete): what a caller needs to make its next
    conditional write without reading the entity again."""
    if not isinstance(table, TableClient) or not operations:
        return list(table.submit_transaction(operations) or [])
    reqs = operation_requests(table, operations)
    batch_boundary, changeset_boundary = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    body = encode_batch(batch_boundary, changeset_boundary, [serialize_part(r.method, r.url, r.headers, _body(r)) for r in reqs])
    request = HttpRequest(
        "POST",
        f"{table.scheme}://{table._primary_hostname}/$batch",
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch_boundary}",
            "Accept": "application/json",
        },
        content=body,
    )
    # stream: the pipeline must not try to decode a multipart reply (the SDK streams it too)
    response = table._client.send_request(request, stream=True)
    reply = response.read()
    if accepted(response.status_code, reply, len(reqs)):
        return [{"etag": etag} if etag else {} for etag in etags(reply)]
    return list(table.submit_transaction(operations))  # the SDK's typed error (the failed batch changed nothing)


def etags(reply: bytes) -> list[str | None]:
    """The ``ETag`` header of each sub-response of a ``$batch`` reply, in operation order (None
    where a sub-response has none, as a delete's)."""
    starts = [m.start() for m in _STATUS.finditer(reply)]
    out: list[str | None] = []
    for start, end in zip(starts, [*starts[1:], len(reply)], strict=True):
        part = reply[start:end]
        head = part.split(_CRLF + _CRLF, 1)[0]
        found = _ETAG.search(head)
        out.append(found.group(1).strip().decode("latin-1") if found else None)
    return out


def accepted(status: int, reply: bytes, operations: int) -> bool:
    """True if a ``$batch`` reply says every operation succeeded: 202, one ``2xx`` status line each."""
    if status != 202:
        return False
    codes = _STATUS.findall(reply)
    return len(codes) == operations and all(c.startswith(b"2") for c in codes)
