"""The Azure SDK behind :mod:`corpus.store.ports`: production, and Azurite locally.

Every SDK call, error code and Azure/Azurite difference of blob and queue I/O lives here, so the use
cases see one behaviour. The differences normalised (each pinned by the conformance suite):

* a copy refused by its source condition: Azure 412 ``SourceConditionNotMet`` (or 404 for a gone
  source), Azurite 412 ``ConditionNotMet``, the same code as a taken destination: the destination
  decides (:class:`BlobExists` if it exists, else :class:`SourceChanged`);
* a conditional delete of a deleted blob: Azure 404, Azurite 412: both ``False``;
* ``If-None-Match: *`` on upload: 409 ``BlobAlreadyExists``; on commit or copy: 409 or 412;
* copies: Azure may finish them asynchronously (``copy_status`` pending), Azurite finishes at once:
  :meth:`AzureBlobStore.copy_once` waits, so both return a finished :class:`CopyState`;
* 304 on ``If-None-Match``: the SDK raises ``ResourceModifiedError`` or ``ResourceNotModifiedError``
  (its error code is ``ConditionNotMet``): :meth:`read_if_changed` returns ``None``;
* Put Blob From URL: Azure has it, Azurite 3.35 does not. With ``put_from_url`` (chosen by
  :func:`put_from_url_supported` from ``CORPUS_COPY_MODE``) :meth:`AzureBlobStore.copy_once` given
  an :class:`Expected` sends one synchronous Put Blob From URL instead of Copy Blob + Get Blob
  Properties (+ Set Blob Properties).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
)
from azure.storage.blob import BlobBlock, BlobClient, BlobProperties, ContentSettings

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
from corpus.store.settings import Settings
from corpus.store.storage import Clients, blob_request, error_code

COPY_DEADLINE_S = 120.0


def _quoted(etag: Any) -> str:
    """Listings return ETags bare, reads quoted: the port always quotes them."""
    text = str(etag or "")
    return text if not text or text.startswith('"') else f'"{text}"'


def _info(name: str, props: Any) -> BlobInfo:
    settings = props.content_settings
    return BlobInfo(
        name=name,
        size=int(props.size or 0),
        etag=_quoted(props.etag),
        md5=bytes(settings.content_md5 or b"").hex() if settings else "",
        content_type=str(settings.content_type or "") if settings else "",
        metadata=dict(props.metadata or {}),
        last_modified=props.last_modified,
        blob_type=_blob_type(getattr(props, "blob_type", None)),
    )


def _info_of_headers(name: str, headers: Mapping[str, str]) -> BlobInfo:
    """:class:`BlobInfo` from a Get Blob Properties response's headers (names case-insensitive)."""
    md5 = headers.get("content-md5", "")
    modified = headers.get("last-modified")
    metadata = {k[len("x-ms-meta-") :]: v for k, v in headers.items() if k.lower().startswith("x-ms-meta-")}
    return BlobInfo(
        name=name,
        size=int(headers.get("content-length", 0) or 0),
        etag=_quoted(headers.get("etag", "")),
        md5=base64.b64decode(md5).hex() if md5 else "",
        content_type=headers.get("content-type", ""),
        metadata=metadata,
        last_modified=parsedate_to_datetime(modified) if modified else None,
        blob_type=_blob_type(headers.get("x-ms-blob-type")),
    )


def _blob_type(value: Any) -> str:
    text = str(getattr(value, "value", value) or "BlockBlob")
    return {"blockblob": "BlockBlob", "appendblob": "AppendBlob", "pageblob": "PageBlob"}.get(text.lower(), text)


def _storage_error(exc: HttpResponseError) -> StorageError:
    code = error_code(exc)
    status = exc.status_code
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return BlobNotFound(str(exc.message or "not found"), status, code)
    if status == 412:
        return PreconditionFailed(str(exc.message or "condition not met"), status, code)
    return StorageError(str(exc.message or exc), status, code)


def as_storage_error(exc: BaseException) -> StorageError | None:
    """The typed error for a storage failure, whichever layer raised it (the table adapters still
    let SDK errors through): for callers that answer with a status, e.g. the HTTP handlers."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, HttpResponseError):
        return _storage_error(exc)
    return None


@contextmanager
def _translated() -> Iterator[None]:
    """404 → :class:`BlobNotFound`, 412 → :class:`PreconditionFailed`, else :class:`StorageError`."""
    try:
        yield
    except HttpResponseError as exc:
        raise _storage_error(exc) from exc


STORAGE_SCOPE = "https://storage.azure.com/.default"
SOURCE_SAS_MINUTES = 15
_EMULATOR_HOSTS = ("127.0.0.1", "localhost", "azurite")


def put_from_url_supported(settings: Settings) -> bool:
    """``CORPUS_COPY_MODE``: ``put-from-url`` or ``copy`` as said; ``auto``: ``copy`` against the
    storage emulator (Azurite 3.35 answers Put Blob From URL with an error), else ``put-from-url``
    (Azure Storage has had it since service version 2020-04-08)."""
    if settings.copy_mode != "auto":
        return settings.copy_mode == "put-from-url"
    c = settings.connection
    where = (c.connection_string or c.blob_uri or "").lower()
    return not ("usedevelopmentstorage" in where or "devstoreaccount1" in where or any(h in where for h in _EMULATOR_HOSTS))


class AzureBlobStore(BlobStore):
    """:class:`corpus.store.ports.BlobStore` on ``azure-storage-blob``.

    ``put_from_url``: :meth:`copy_once` with an :class:`Expected` uses Put Blob From URL (one
    request, the service checking the MD5 and writing the headers) instead of Copy Blob.
    """

    def __init__(self, clients: Clients, *, put_from_url: bool = False) -> None:
        self.clients = clients
        self.put_from_url = put_from_url

    def _blob(self, container: str, name: str) -> BlobClient:
        check_blob_name(name)
        return self.clients.container(container).get_blob_client(name)

    def url(self, container: str, name: str = "") -> str:
        if not name:
            return str(self.clients.container(container).url)
        return str(self._blob(container, name).url)

    def ensure_container(self, container: str) -> None:
        try:
            self.clients.container(container).create_container()
        except ResourceExistsError:
            pass

    def info(self, container: str, name: str) -> BlobInfo:
        """One Get Blob Properties through the container client's pipeline (signing, retries),
        reading only the headers :class:`BlobInfo` holds: the SDK's own call builds a ``BlobClient``
        and deserialises some fifty headers, ~2 ms of CPU under load; ingest makes it twice an image."""
        check_blob_name(name)
        with _translated():
            response = blob_request(self.clients.container(container), "HEAD", name)
            response.read()  # nothing: a HEAD
        if response.status_code != 200:
            code = response.headers.get("x-ms-error-code", "")
            if response.status_code == 404:
                raise BlobNotFound(f"{code or 'not found'}: {container}/{name}", 404, code)
            if response.status_code == 412:
                raise PreconditionFailed(f"{code or 'condition not met'}: {container}/{name}", 412, code)
            raise StorageError(f"{code or response.reason}: HEAD {container}/{name}", response.status_code, code)
        return _info_of_headers(name, response.headers)

    def exists(self, container: str, name: str) -> bool:
        with _translated():
            return bool(self._blob(container, name).exists())

    def read(self, container: str, name: str, *, if_match: str | None = None) -> Blob:
        kw: dict[str, Any] = {"etag": if_match, "match_condition": MatchConditions.IfNotModified} if if_match else {}
        with _translated():
            downloader = self._blob(container, name).download_blob(**kw)
            data = downloader.readall()
        return Blob(_info(name, downloader.properties), data)

    def read_if_changed(self, container: str, name: str, etag: str) -> Blob | None:
        try:
            downloader = self._blob(container, name).download_blob(etag=etag, match_condition=MatchConditions.IfModified)
            data = downloader.readall()
        except (ResourceNotModifiedError, ResourceModifiedError) as exc:
            if exc.status_code == 304:
                return None
            raise _storage_error(exc) from exc
        except HttpResponseError as exc:
            raise _storage_error(exc) from exc
        return Blob(_info(name, downloader.properties), data)

    def read_ranges(self, container: str, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        blob = self._blob(container, name)
        with _translated():
            return [bytes(blob.download_blob(offset=off, length=n).readall()) if n else b"" for off, n in ranges]

    def content_md5(self, container: str, info: BlobInfo) -> str:
        if info.md5:
            return info.md5
        return hashlib.md5(self.read(container, info.name, if_match=info.etag).data, usedforsecurity=False).hexdigest()

    def put(self, container: str, name: str, data: bytes, content_type: str = "") -> BlobInfo:
        blob = self._blob(container, name)
        with _translated():
            blob.upload_blob(data, overwrite=True, content_settings=ContentSettings(content_type=content_type or None))
            return _info(name, blob.get_blob_properties())

    def put_once(self, container: str, name: str, data: bytes, content_type: str) -> bool:
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        blob = self._blob(container, name)
        try:
            blob.upload_blob(
                data,
                overwrite=False,
                content_settings=ContentSettings(content_type=content_type, content_md5=bytearray(md5)),
            )
            return True
        except (ResourceExistsError, ResourceModifiedError):
            self._same_or_conflict(container, name, md5.hex())
            return False
        except HttpResponseError as exc:
            raise _storage_error(exc) from exc

    def put_if_match(self, container: str, name: str, data: bytes, etag: str, content_type: str) -> BlobInfo:
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        blob = self._blob(container, name)
        try:
            result = blob.upload_blob(
                data,
                overwrite=True,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
                content_settings=ContentSettings(content_type=content_type, content_md5=bytearray(md5)),
            )
        except HttpResponseError as exc:
            if isinstance(exc, ResourceModifiedError | ResourceNotFoundError) or exc.status_code in (404, 412):
                # changed: 412; gone: Azure 412 or 404 (BlobNotFound): neither is at `etag`
                raise PreconditionFailed(f"{container}/{name} is not at {etag}", exc.status_code, error_code(exc)) from exc
            raise _storage_error(exc) from exc
        return BlobInfo(
            name=name,
            size=len(data),
            etag=_quoted(result.get("etag")),
            md5=md5.hex(),
            content_type=content_type,
            last_modified=result.get("last_modified"),
        )

    def _same_or_conflict(self, container: str, name: str, md5: str) -> None:
        stored = self.info(container, name)
        stored_md5 = self.content_md5(container, stored)
        if stored_md5 != md5:
            raise BlobConflict(
                f"{container}/{name} exists with other content (MD5 {stored_md5 or 'none'}, not {md5})", stored_md5, stored.size
            )

    def stage_block(self, container: str, name: str, block_id: str, data: bytes) -> None:
        with _translated():
            self._blob(container, name).stage_block(block_id, data, length=len(data))

    def _commit(self, container: str, name: str, ids: Sequence[str], content_type: str, md5: str, **kw: Any) -> None:
        settings = ContentSettings(content_type=content_type, content_md5=bytearray(bytes.fromhex(md5)) if md5 else None)
        self._blob(container, name).commit_block_list([BlobBlock(block_id=i) for i in ids], content_settings=settings, **kw)

    def commit_blocks(self, container: str, name: str, block_ids: Sequence[str], content_type: str, md5: str = "") -> None:
        with _translated():
            self._commit(container, name, block_ids, content_type, md5)

    def commit_blocks_once(self, container: str, name: str, block_ids: Sequence[str], content_type: str, md5: str) -> bool:
        try:
            self._commit(container, name, block_ids, content_type, md5, match_condition=MatchConditions.IfMissing)
            return True
        except (ResourceExistsError, ResourceModifiedError):
            self._same_or_conflict(container, name, md5)
            return False
        except HttpResponseError as exc:
            raise _storage_error(exc) from exc

    def copy(self, container: str, name: str, source: CopySource, *, once: bool, expect: Expected | None = None) -> CopyState:
        dest = self._blob(container, name)
        src = self._blob(source.container, source.name)
        if once and self.put_from_url and expect is not None:
            return self._put_from_url(dest, src, source.etag, expect)
        try:
            result = dest.start_copy_from_url(
                src.url,
                source_etag=source.etag,
                source_match_condition=MatchConditions.IfNotModified,
                match_condition=MatchConditions.IfMissing if once else None,
            )
        except HttpResponseError as exc:
            code = error_code(exc)
            if once and code == "BlobAlreadyExists":
                raise BlobExists(f"{container}/{name} exists", exc.status_code, code) from exc
            if isinstance(exc, ResourceModifiedError) or code in _REFUSED:
                # Azure names the source's condition (SourceConditionNotMet); Azurite says
                # ConditionNotMet for both: the destination decides.
                if once and code not in _SOURCE_CODES and self.exists(container, name):
                    raise BlobExists(f"{container}/{name} exists", exc.status_code, code) from exc
                raise SourceChanged(f"{source} is not at {source.etag}", exc.status_code, code) from exc
            raise _storage_error(exc) from exc
        return self._finished(dest, result)

    def _put_from_url(self, dest: BlobClient, source: BlobClient, source_etag: str, expect: Expected) -> CopyState:
        """One synchronous Put Blob From URL: ``If-None-Match: *`` on the destination,
        ``x-ms-source-if-match`` on the source, ``x-ms-source-content-md5`` (the service computes
        the source's MD5 and refuses a mismatch with 400 ``Md5Mismatch``, writing nothing), the
        validated content type and MD5 as the new blob's headers, the source's own properties not
        copied. The source is authorised as Put Blob From URL requires (a same-account source is
        not implied): a bearer token of the function's identity, or a short read SAS for a key."""
        md5 = bytes.fromhex(expect.md5)
        url, auth = self._source_access(source)
        try:
            result = dest.upload_blob_from_url(
                url,
                overwrite=False,
                include_source_blob_properties=False,
                source_content_md5=bytearray(md5),
                source_etag=source_etag,
                source_match_condition=MatchConditions.IfNotModified,
                content_settings=ContentSettings(content_type=expect.content_type),
                headers={"x-ms-blob-content-md5": base64.b64encode(md5).decode("ascii")},
                source_authorization=auth,
            )
        except HttpResponseError as exc:
            code = error_code(exc)
            where = f"{dest.container_name}/{dest.blob_name}"
            if code == "BlobAlreadyExists":
                raise BlobExists(f"{where} exists", exc.status_code, code) from exc
            if code in ("Md5Mismatch", "InvalidMd5"):
                raise CopyFailed(f"copy of {source.blob_name} into {where}: the service's MD5 differs from {expect.md5}") from exc
            if isinstance(exc, ResourceModifiedError) or code in _REFUSED or exc.status_code == 404:
                if code not in _SOURCE_CODES and self.exists(dest.container_name, dest.blob_name):
                    raise BlobExists(f"{where} exists", exc.status_code, code) from exc
                raise SourceChanged(
                    f"{source.container_name}/{source.blob_name} is not at {source_etag}", exc.status_code, code
                ) from exc
            raise _storage_error(exc) from exc
        return CopyState("success", _quoted(result.get("etag")), verified=True)

    def _source_access(self, source: BlobClient) -> tuple[str, str | None]:
        """The source URL and the ``x-ms-copy-source-authorization`` for it (``None``: in the URL)."""
        credential = self.clients.credential
        if credential is not None:
            return str(source.url), f"Bearer {credential.get_token(STORAGE_SCOPE).token}"
        key = getattr(self.clients.blob.credential, "account_key", None)
        if key is None:  # a SAS connection string: the client's URL carries it
            return str(source.url), None
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(
            str(source.account_name),
            source.container_name,
            source.blob_name,
            account_key=key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(minutes=SOURCE_SAS_MINUTES),
        )
        return f"{source.url}?{sas}", None

    def wait_copy(self, container: str, name: str) -> CopyState:
        return self._finished(self._blob(container, name), None)

    def _finished(self, dest: BlobClient, result: Any) -> CopyState:
        """Same-account copies usually finish at once; otherwise poll the destination until done
        (there is no event to wait on). Pending past :data:`COPY_DEADLINE_S`: :class:`CopyFailed`."""
        if result is not None and result.get("copy_status") == "success":
            return CopyState("success", str(result.get("etag") or ""))
        deadline = time.monotonic() + COPY_DEADLINE_S
        delay = 0.05
        while True:
            with _translated():
                props: BlobProperties = dest.get_blob_properties()
            status = props.copy.status if props.copy else None
            if status in (None, "success", "failed", "aborted"):
                why = (props.copy.status_description if props.copy else "") or ""
                return CopyState(str(status or "success"), str(props.etag), why)
            if time.monotonic() > deadline:
                raise CopyFailed(f"server-side copy to {dest.blob_name} still pending after {COPY_DEADLINE_S:.0f}s")
            time.sleep(delay)  # polling a remote copy: there is no event to wait on
            delay = min(delay * 2, 2.0)

    def set_headers_if_unchanged(self, container: str, name: str, etag: str, *, content_type: str, md5: str) -> None:
        with _translated():
            self._blob(container, name).set_http_headers(
                ContentSettings(content_type=content_type, content_md5=bytearray(bytes.fromhex(md5))),
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )

    def delete_if_unchanged(self, container: str, name: str, etag: str) -> bool:
        try:
            self._blob(container, name).delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
            return True
        except (ResourceNotFoundError, ResourceModifiedError):
            return False
        except HttpResponseError as exc:
            if exc.status_code in (404, 412):
                return False
            raise _storage_error(exc) from exc

    def delete_many_if_unchanged(self, container: str, items: Sequence[tuple[str, str]]) -> list[bool]:
        """One Blob Batch request per :data:`MAX_BATCH_DELETES`: each subrequest a Delete Blob with
        ``If-Match``; 202 deleted, 404/412 changed or gone (False), anything else raised."""
        client = self.clients.container(container)
        out: list[bool] = []
        for start in range(0, len(items), MAX_BATCH_DELETES):
            chunk = items[start : start + MAX_BATCH_DELETES]
            with _translated():
                replies = list(
                    client.delete_blobs(
                        *({"name": n, "etag": e, "match_condition": MatchConditions.IfNotModified} for n, e in chunk),
                        raise_on_any_failure=False,
                    )
                )
            for (name, _), reply in zip(chunk, replies, strict=True):
                if reply.status_code not in (202, 404, 412):
                    why = f"batch delete of {container}/{name}: HTTP {reply.status_code} {reply.reason or ''}"
                    raise StorageError(why.strip(), reply.status_code)
                out.append(reply.status_code == 202)
        return out

    def list_page(self, container: str, prefix: str = "", cursor: str | None = None, limit: int = LIST_PAGE) -> BlobPage:
        client = self.clients.container(container)
        with _translated():
            pages = client.list_blobs(name_starts_with=prefix or None, results_per_page=limit).by_page(continuation_token=cursor)
            items = tuple(_info(p.name, p) for p in next(pages))
            token = pages.continuation_token  # type: ignore[attr-defined]
        return BlobPage(items, str(token) if token else None)


_SOURCE_CODES = ("SourceConditionNotMet", "CannotVerifyCopySource", "BlobNotFound")
_REFUSED = ("ConditionNotMet", *_SOURCE_CODES)


def encode_message(text: str, encoding: str) -> str:
    """A producer must match the trigger's ``messageEncoding``, or its messages go to poison."""
    import base64

    return base64.b64encode(text.encode("utf-8")).decode("ascii") if encoding == "base64" else text


def decode_message(body: str, encoding: str) -> str:
    import base64

    return base64.b64decode(body).decode("utf-8") if encoding == "base64" else body


def check_message(queue: str, body: str) -> None:
    """Azure's 64 KiB counts the encoded body; refused here, the same on every implementation."""
    size = len(body.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message for {queue} is {size} bytes encoded, above Azure's {MAX_MESSAGE_BYTES}")


class AzureOutbox:
    """:class:`corpus.store.ports.Outbox` on ``azure-storage-queue``, with host.json's encoding."""

    def __init__(self, clients: Clients, encoding: str) -> None:
        self.clients = clients
        self.encoding = encoding

    def send(self, queue: str, text: str, time_to_live: int | None = None) -> None:
        body = encode_message(text, self.encoding)
        check_message(queue, body)
        with _translated():
            self.clients.queue_client(queue).send_message(body, time_to_live=time_to_live)

    def receive(self, queue: str, max_messages: int = 32, visibility_timeout: int = 30) -> list[Message]:
        with _translated():
            got = self.clients.queue_client(queue).receive_messages(
                messages_per_page=max_messages, max_messages=max_messages, visibility_timeout=visibility_timeout
            )
            return [
                Message(str(m.id), str(m.pop_receipt), decode_message(str(m.content), self.encoding), int(m.dequeue_count or 0))
                for m in got
            ]

    def delete(self, queue: str, message: Message) -> None:
        with _translated():
            self.clients.queue_client(queue).delete_message(message.id, message.pop_receipt)
