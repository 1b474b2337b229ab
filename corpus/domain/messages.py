"""Queue message schemas, defined and validated in one place.

Messages are plain JSON text. Parsing is strict: unknown fields, missing fields and wrong types
are refused with a message that names the field, because a message that half-parses is worse
than one that fails loudly (it would be retried forever or, worse, do the wrong thing).

For messages typed by hand (Storage Explorer's "Add message" offers to base64-encode the body),
:func:`decode_body` accepts both plain JSON and base64-encoded JSON, whatever the host's
``messageEncoding`` setting: see the README's "Queue messages" section.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from corpus.domain.errors import MessageError


def decode_body(body: bytes | str) -> dict[str, Any]:
    """Return the JSON object in ``body``, which may be plain or base64-encoded JSON."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.strip()
    value = _json_or_none(text)
    if value is None:
        try:
            decoded = base64.b64decode(text, validate=True).decode("utf-8").strip()
        except (binascii.Error, ValueError):
            decoded = None
        value = _json_or_none(decoded) if decoded else None
        if value is None:
            raise MessageError("message is neither JSON nor base64-encoded JSON")
    if not isinstance(value, dict):
        raise MessageError("message must be a JSON object")
    return value


def _refuse_constant(name: str) -> Any:
    raise MessageError(f"message contains {name}, which is not JSON (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _refuse_constant(text)
    return value


def _json_or_none(text: str) -> Any:
    """The JSON value in ``text``, ``None`` if it is not JSON at all.

    Refused at once, as :class:`MessageError` (so poisoned, not retried): ``NaN`` and
    ``Infinity``, which Python's parser accepts and which pass every range check, and integers
    longer than Python's conversion limit (4,300 digits), which raise a plain ``ValueError``.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, RecursionError):
        return None
    except MessageError:
        raise
    except ValueError as exc:
        raise MessageError(f"message holds a number that can't be read: {exc}") from exc


class Fields:
    """Strict reader over one JSON object: every field must be read, typed and present."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise MessageError(f"{where} must be a JSON object")
        self._obj: dict[str, Any] = obj
        self._where = where
        self._seen: set[str] = set()

    def _get(self, key: str, types: type | tuple[type, ...], required: bool, default: Any) -> Any:
        self._seen.add(key)
        if key not in self._obj:
            if required:
                raise MessageError(f"{self._where}: missing field {key!r}")
            return default
        value = self._obj[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise MessageError(f"{self._where}: field {key!r} must not be a boolean")
        if not isinstance(value, types):
            raise MessageError(f"{self._where}: field {key!r} has the wrong type")
        return value

    def str(self, key: str, *, required: bool = True, default: str | None = None) -> Any:
        value = self._get(key, str, required, default)
        if required and value == "":
            raise MessageError(f"{self._where}: field {key!r} must not be empty")
        return value

    def int(self, key: builtins.str, *, required: bool = True, default: builtins.int | None = None) -> Any:
        return self._get(key, builtins.int, required, default)

    def any(self, key: builtins.str, types: type | tuple[type, ...], *, required: bool = True, default: Any = None) -> Any:
        return self._get(key, types, required, default)

    def done(self) -> None:
        extra = sorted(set(self._obj) - self._seen)
        if extra:
            raise MessageError(f"{self._where}: unknown field(s) {', '.join(map(repr, extra))}")


def open_message(
    body: bytes | str, where: str, kind: str, versions: tuple[int, ...], wrong_kind: str, wrong_version: str | None = None
) -> tuple[Fields, int]:
    """The strict reader over a queue message's body, its ``kind`` and schema ``v`` checked first.

    ``kind`` is read before ``v`` (a message of another kind is refused as such, whatever its
    version); a ``kind`` other than ``kind`` raises ``wrong_kind``, a ``v`` not in ``versions``
    ``wrong_version`` (``wrong_kind`` when not given: one message for both). Returns the reader
    (``kind`` and ``v`` marked as read) and the version."""
    f = Fields(decode_body(body), where)
    if f.str("kind") != kind:
        raise MessageError(wrong_kind)
    version: int = f.int("v")
    if version not in versions:
        raise MessageError(wrong_kind if wrong_version is None else wrong_version)
    return f, version


@dataclass(frozen=True, slots=True)
class CopyRequest:
    """Ask the copy function to move one validated staged upload into ``original/``.

    The message names the upload (staged name + ETag) and claims nothing about it: the queue is a
    trust boundary (anyone who may write to it could craft a message), so size, MD5, content type
    and dimensions are read from the blob trigger's validation record
    (:class:`corpus.store.rows.ValidationRow`), and a message naming an upload without one is
    refused. The set is derived again from ``staged_name``. ``staged_etag`` pins the exact upload
    that was validated: a newer upload under the same name gets its own event and its own message.

    Schema 1 also carried the trigger's findings; such messages are still accepted (queued before an
    upgrade), and those fields are type-checked and then ignored.
    """

    staged_name: str
    staged_etag: str

    KIND = "copy"
    VERSION = 2
    _V1_CLAIMS = (("size", int), ("md5", str), ("content_type", str), ("width", int), ("height", int), ("format", str))

    def to_json(self) -> str:
        body = {"kind": self.KIND, "v": self.VERSION, "staged_name": self.staged_name, "staged_etag": self.staged_etag}
        return json.dumps(body, ensure_ascii=False, sort_keys=True)

    @classmethod
    def parse(cls, body: bytes | str) -> CopyRequest:
        f, version = open_message(
            body,
            "copy request",
            cls.KIND,
            (1, cls.VERSION),
            "copy request: field 'kind' must be 'copy'",
            "copy request: unsupported schema version",
        )
        req = cls(staged_name=f.str("staged_name"), staged_etag=f.str("staged_etag"))
        if version == 1:
            for key, kind in cls._V1_CLAIMS:
                f.any(key, kind, required=False)
        f.done()
        return req


@dataclass(frozen=True, slots=True)
class SourceSelector:
    """Which original sets a transform request covers: one set by path, or all sets with every tag."""

    path: str | None = None
    version: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TransformRequest:
    """A user's request, typically typed by hand; see the README's "Transforms" section.

    ``{"domain": "birds", "source": {"path": "red/angry/robin", "version": "v1"},
       "transform": {"name": "thumbnail", "version": "1", "args": {"size": 256}}}``
    """

    domain: str
    source: SourceSelector
    name: str
    version: str
    args: dict[str, Any]

    def to_json(self) -> str:
        source: dict[str, Any] = {}
        if self.source.path is not None:
            source["path"] = self.source.path
        if self.source.version is not None:
            source["version"] = self.source.version
        if self.source.tags:
            source["tags"] = list(self.source.tags)
        transform = {"name": self.name, "version": self.version, "args": self.args}
        return json.dumps({"domain": self.domain, "source": source, "transform": transform}, ensure_ascii=False)

    @classmethod
    def parse(cls, body: bytes | str) -> TransformRequest:
        from corpus.domain.errors import InvalidNameError
        from corpus.domain.paths import validate_domain, validate_version

        f = Fields(decode_body(body), "transform request")
        domain = f.str("domain")
        src = Fields(f.any("source", dict), "transform request 'source'")
        t = Fields(f.any("transform", dict), "transform request 'transform'")
        f.done()
        path = src.str("path", required=False)
        version = src.str("version", required=False)
        tags = src.any("tags", list, required=False, default=[])
        src.done()
        name, tversion = t.str("name"), t.str("version")
        args = t.any("args", dict, required=False, default={})
        t.done()
        try:
            validate_domain(domain)
            if version is not None:
                validate_version(version)
            validate_version(name, "transform name")
            validate_version(tversion, "transform version")
        except InvalidNameError as exc:
            raise MessageError(f"transform request: {exc}") from exc
        if not all(isinstance(tag, str) and tag.strip() for tag in tags):
            raise MessageError("transform request: 'source.tags' must be a list of non-empty strings")
        if (path is None) == (not tags):
            raise MessageError("transform request: 'source' needs exactly one of 'path' (with 'version') or 'tags'")
        if path is not None and version is None:
            raise MessageError("transform request: 'source.path' needs 'source.version' (versions are what a model trains on)")
        return cls(domain, SourceSelector(path, version, tuple(tags)), name, tversion, args)


@dataclass(frozen=True, slots=True)
class TransformJob:
    """One source image to transform; fanned out from a :class:`TransformRequest`.

    Names the transform by (name, version) only: the job renders with the arguments *registered*
    in ``ImageTransforms`` (a message can't choose them, and a long pipeline does not travel in
    every job). Every name component is validated with ingest's rules
    (:func:`corpus.domain.paths.parse_staged_name`): a crafted job can't write outside its set's
    ``transform/<name>/<tversion>/<dir…>/<version>/`` slot. Schema 1 (with ``args``) is still
    read, its ``args`` ignored.
    """

    domain: str
    dirs: tuple[str, ...]
    version: str
    file: str
    name: str
    tversion: str

    KIND = "transform-job"

    def to_json(self) -> str:
        body = {
            "kind": self.KIND,
            "v": 2,
            "domain": self.domain,
            "dirs": list(self.dirs),
            "version": self.version,
            "file": self.file,
            "name": self.name,
            "tversion": self.tversion,
        }
        return json.dumps(body, ensure_ascii=False, sort_keys=True)

    @classmethod
    def parse(cls, body: bytes | str) -> TransformJob:
        f, v = open_message(
            body, "transform job", cls.KIND, (1, 2), "transform job: wrong kind", "transform job: unsupported schema version"
        )
        if v == 1:
            f.any("args", dict)  # schema 1 carried the arguments; the registry's are used instead
        dirs = f.any("dirs", list)
        if not all(isinstance(d, str) and d for d in dirs):
            raise MessageError("transform job: 'dirs' must be non-empty strings")
        job = cls(f.str("domain"), tuple(dirs), f.str("version"), f.str("file"), f.str("name"), f.str("tversion"))
        f.done()
        job.validate()
        return job

    def validate(self, reserved: frozenset[str] = frozenset()) -> None:
        """Every component by ingest's rules; refuse anything that would name another slot."""
        from corpus.domain.errors import InvalidNameError
        from corpus.domain.paths import parse_staged_name, validate_version

        try:
            for part in (*self.dirs, self.file):
                if "/" in part:
                    raise InvalidNameError(f"{part!r} contains a path separator")
            staged = parse_staged_name("/".join((self.domain, self.version, *self.dirs, self.file)), reserved=reserved)
            if staged.set.dirs != self.dirs or staged.file != self.file:
                raise InvalidNameError("dirs or file do not survive parsing unchanged")
            validate_version(self.name, "transform name")
            validate_version(self.tversion, "transform version")
        except InvalidNameError as exc:
            raise MessageError(f"transform job: {exc}") from exc


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_PAGES = 10_000_000


@dataclass(frozen=True, slots=True)
class TransformPage:
    """A continuation of a transform request's fan-out: page ``page`` of request ``request``,
    starting after ``cursor`` = (source set row key, image row key), see
    :mod:`corpus.app.transform_jobs`. Sent on the transform-requests queue."""

    request: str
    page: int
    domain: str
    source: SourceSelector
    name: str
    tversion: str
    cursor: tuple[str, str]

    KIND = "transform-page"

    def to_json(self) -> str:
        source: dict[str, Any] = {"tags": list(self.source.tags)}
        if self.source.path is not None:
            source["path"] = self.source.path
        if self.source.version is not None:
            source["version"] = self.source.version
        body = {
            "kind": self.KIND,
            "v": 1,
            "request": self.request,
            "page": self.page,
            "domain": self.domain,
            "source": source,
            "name": self.name,
            "tversion": self.tversion,
            "cursor": list(self.cursor),
        }
        return json.dumps(body, ensure_ascii=False, sort_keys=True)

    @classmethod
    def parse(cls, body: bytes | str) -> TransformPage:
        from corpus.domain.errors import InvalidNameError
        from corpus.domain.paths import validate_domain, validate_version

        f, _ = open_message(body, "transform page", cls.KIND, (1,), "transform page: wrong kind or schema version")
        request, page = f.str("request"), f.int("page")
        domain, name, tversion = f.str("domain"), f.str("name"), f.str("tversion")
        cursor = f.any("cursor", list)
        src = Fields(f.any("source", dict), "transform page 'source'")
        f.done()
        path = src.str("path", required=False)
        version = src.str("version", required=False)
        tags = src.any("tags", list)
        src.done()
        if not _REQUEST_ID.match(request) or not 0 < page < MAX_PAGES:
            raise MessageError("transform page: bad request id or page number")
        if len(cursor) != 2 or not all(isinstance(c, str) and len(c) <= 1024 for c in cursor):
            raise MessageError("transform page: 'cursor' must be two row keys")
        if not all(isinstance(t, str) and t.strip() for t in tags) or (path is None) == (not tags):
            raise MessageError("transform page: 'source' needs exactly one of 'path' or 'tags'")
        try:
            validate_domain(domain)
            validate_version(name, "transform name")
            validate_version(tversion, "transform version")
            if version is not None:
                validate_version(version)
        except InvalidNameError as exc:
            raise MessageError(f"transform page: {exc}") from exc
        return cls(request, page, domain, SourceSelector(path, version, tuple(tags)), name, tversion, (cursor[0], cursor[1]))


def is_transform_page(body: bytes | str) -> bool:
    """True for a continuation message (:class:`TransformPage`) on the transform-requests queue."""
    try:
        return decode_body(body).get("kind") == TransformPage.KIND
    except MessageError:
        return False
