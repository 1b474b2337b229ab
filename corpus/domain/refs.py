"""Small value objects for what users and rows name by text: a transform (``NAME:VERSION``), a
training set (``NAME:VERSION``) and a page cursor (an opaque continuation token).

Each was split or encoded by hand in several places; here it is parsed once, validated once, and
printed back the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corpus.domain.errors import InvalidNameError, MessageError
from corpus.domain.paths import validate_version


@dataclass(frozen=True, slots=True)
class TransformRef:
    """A registered transform version, ``NAME:VERSION`` (``version`` is ``""`` when a filter
    allows any version: ``NAME`` alone)."""

    name: str
    version: str = ""

    @classmethod
    def parse(cls, text: str, *, version_required: bool = True) -> TransformRef:
        """``NAME:VERSION`` (or ``NAME`` when not ``version_required``); :class:`InvalidNameError` otherwise."""
        name, sep, version = text.partition(":")
        if not name or (version_required and (not sep or not version)):
            raise InvalidNameError(f"transform must be NAME:VERSION, not {text!r}")
        if version:
            validate_version(version, "transform version")
        return cls(name, version)

    @classmethod
    def from_label(cls, label: str) -> TransformRef | None:
        """A stored ``Transform`` property (written by us, so not re-validated); ``""`` is none."""
        if not label:
            return None
        name, _, version = label.partition(":")
        return cls(name, version)

    @property
    def pair(self) -> tuple[str, str]:
        """As the tables and keys take it: ``(name, version)``."""
        return (self.name, self.version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else self.name


@dataclass(frozen=True, slots=True)
class TrainsetRef:
    """A training set version, ``NAME:VERSION``: both parts become blob path segments."""

    name: str
    version: str

    @classmethod
    def parse(cls, text: str, what: str = "training set") -> TrainsetRef:
        """``NAME:VERSION`` with both parts valid version-like names; :class:`MessageError` otherwise."""
        name, sep, version = text.partition(":")
        if not sep:
            raise MessageError(f"{what} {text!r}: expected NAME:VERSION")
        try:
            return cls(validate_version(name, f"{what} name"), validate_version(version, f"{what} version"))
        except InvalidNameError as exc:
            raise MessageError(str(exc)) from exc

    @property
    def pair(self) -> tuple[str, str]:
        return (self.name, self.version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


MAX_CURSOR = 4096


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page of a key-ordered read starts: the Tables continuation
    (``{"PartitionKey": …, "RowKey": …}``) as one URL-safe string, the same for the HTTP API, the
    CLI's ``--continuation`` and the gallery. A forged cursor can only skip rows of the same query
    (it names a key, never a table), so checking its shape is all the validation it needs."""

    partition_key: str | None
    row_key: str | None

    @classmethod
    def of(cls, token: Mapping[str, Any] | None) -> Cursor | None:
        """From the SDK's continuation token (``None`` at the end)."""
        if not token:
            return None
        return cls(token.get("PartitionKey"), token.get("RowKey"))

    def token(self) -> dict[str, Any]:
        """As the SDK takes it back."""
        return {"PartitionKey": self.partition_key, "RowKey": self.row_key}

    def encode(self) -> str:
        raw = json.dumps({"pk": self.partition_key, "rk": self.row_key}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str | None) -> Cursor | None:
        """Inverse of :meth:`encode`; anything else is an :class:`InvalidNameError` (a ``ValueError``: the caller's 400)."""
        if not text:
            return None
        if len(text) > MAX_CURSOR:
            raise InvalidNameError("continuation token too long")
        try:
            data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error) as exc:
            raise InvalidNameError("malformed continuation token") from exc
        if not isinstance(data, dict) or set(data) != {"pk", "rk"}:
            raise InvalidNameError("malformed continuation token")
        if not all(v is None or (isinstance(v, str) and len(v) <= 1024) for v in data.values()):
            raise InvalidNameError("malformed continuation token")
        return cls(data["pk"], data["rk"])
