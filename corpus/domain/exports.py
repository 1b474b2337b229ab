"""Messages of queue ``export-requests`` (``CORPUS_EXPORT_QUEUE``) and what names an export.

A **request** names a training set and the export's parameters (:class:`ExportParams`); the
export lives at ``<name>/<version>/<format>-<digest>/`` where ``digest`` is a short SHA-256 of
the canonical parameters (:meth:`ExportParams.export_id`): the same parameters again are the same
export (a no-op), other parameters a new export beside the first.

A **shard job** (:class:`ExportShardJob`) names only an export and a shard (split, index). The
queue is one operators may write to, so the job carries nothing the worker trusts: the worker
takes the shard's contents from the export's immutable plan (which the request handler wrote and
which records every shard's work list and its MD5) and refuses a job the plan does not list.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from corpus.domain.errors import MessageError
from corpus.domain.layouts import IMAGE_FORMATS
from corpus.domain.manifest import parse_ref
from corpus.domain.messages import Fields, decode_body, open_message

FORMATS = ("webdataset", "parquet", "azureml")
SHARDED = ("webdataset", "parquet")
MIN_SHARD_BYTES = 16 * 1024
MAX_SHARD_BYTES = 16 * 1024**3
DEFAULT_SHARD_BYTES = 500 * 1000 * 1000
MAX_SEED = 2**63 - 1
MAX_SHARDS = 20_000
"""Shard jobs one request may fan out: sending them must fit in one invocation's time."""

EXPORT_ID = re.compile(r"^(webdataset|parquet|azureml)-[0-9a-f]{8}$")


def _trainset(f: Fields, where: str) -> tuple[str, str]:
    t = Fields(f.any("trainset", dict), f"{where}: trainset")
    name, version = t.str("name"), t.str("version")
    t.done()
    return parse_ref(f"{name}:{version}")


@dataclass(frozen=True, slots=True)
class ExportParams:
    """What makes one export differ from another of the same training set."""

    format: str
    shard_size: int = DEFAULT_SHARD_BYTES
    seed: int = 0
    image_format: str = "keep"
    datastore: str | None = None

    def validate(self, where: str = "export request") -> ExportParams:
        if self.format not in FORMATS:
            raise MessageError(f"{where}: format must be one of {', '.join(FORMATS)}")
        if not MIN_SHARD_BYTES <= self.shard_size <= MAX_SHARD_BYTES:
            raise MessageError(f"{where}: shard_size must be between {MIN_SHARD_BYTES} and {MAX_SHARD_BYTES} bytes")
        if not 0 <= self.seed <= MAX_SEED:
            raise MessageError(f"{where}: seed must be between 0 and {MAX_SEED}")
        if self.image_format not in IMAGE_FORMATS:
            raise MessageError(f"{where}: image_format must be one of {', '.join(IMAGE_FORMATS)}")
        if self.datastore is not None and (not self.datastore or len(self.datastore) > 255 or "/" in self.datastore):
            raise MessageError(f"{where}: datastore must be 1-255 characters without '/'")
        return self

    def canonical(self) -> dict[str, Any]:
        """The parameters that shape this format's bytes, and only those (a seed does not change an
        Azure ML export, a datastore does not change shards)."""
        if self.format == "azureml":
            return {"format": self.format, "datastore": self.datastore}
        return {"format": self.format, "shard_size": self.shard_size, "seed": self.seed, "image_format": self.image_format}

    def digest(self) -> str:
        body = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode("utf-8")).hexdigest()[:8]

    def export_id(self) -> str:
        """``<format>-<8 hex>``: the export's folder under ``<name>/<version>/``."""
        return f"{self.format}-{self.digest()}"


def export_prefix(name: str, version: str, export_id: str) -> str:
    return f"{name}/{version}/{export_id}/"


@dataclass(frozen=True, slots=True)
class ExportRequest:
    name: str
    version: str
    params: ExportParams

    KIND = "export"

    @property
    def format(self) -> str:
        return self.params.format

    @property
    def export_id(self) -> str:
        return self.params.export_id()

    @property
    def prefix(self) -> str:
        return export_prefix(self.name, self.version, self.export_id)

    def to_json(self) -> str:
        p = self.params
        body: dict[str, Any] = {
            "kind": self.KIND,
            "v": 1,
            "trainset": {"name": self.name, "version": self.version},
            "format": p.format,
            "shard_size": p.shard_size,
            "seed": p.seed,
            "image_format": p.image_format,
        }
        if p.datastore:
            body["datastore"] = p.datastore
        return json.dumps(body, ensure_ascii=False, sort_keys=True)

    @classmethod
    def parse(cls, body: bytes | str) -> ExportRequest:
        f, _ = open_message(body, "export request", cls.KIND, (1,), "export request: expected kind 'export', v 1")
        name, version = _trainset(f, "export request")
        params = ExportParams(
            f.str("format"),
            f.int("shard_size", required=False, default=DEFAULT_SHARD_BYTES),
            f.int("seed", required=False, default=0),
            f.str("image_format", required=False, default="keep"),
            f.str("datastore", required=False),
        )
        f.done()
        return cls(name, version, params.validate())


_NOT_A_SHARD_JOB = "export shard job: expected kind 'export-shard', v 2 (it names a shard of a plan, nothing else)"


@dataclass(frozen=True, slots=True)
class ExportShardJob:
    """Write shard ``index`` of ``split`` of export ``export`` (an id, :meth:`ExportParams.export_id`)."""

    name: str
    version: str
    export: str
    split: str
    index: int

    KIND = "export-shard"

    @property
    def prefix(self) -> str:
        return export_prefix(self.name, self.version, self.export)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.KIND,
                "v": 2,
                "trainset": {"name": self.name, "version": self.version},
                "export": self.export,
                "split": self.split,
                "index": self.index,
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def parse(cls, body: bytes | str) -> ExportShardJob:
        f, _ = open_message(body, "export shard job", cls.KIND, (2,), _NOT_A_SHARD_JOB)
        name, version = _trainset(f, "export shard job")
        job = cls(name, version, f.str("export"), f.str("split", required=False, default=""), f.int("index"))
        f.done()
        if not EXPORT_ID.match(job.export):
            raise MessageError("export shard job: export must be <format>-<8 hex digits>")
        if job.index < 0 or len(job.split) > 256:
            raise MessageError("export shard job: index must be >= 0, split at most 256 characters")
        return job


def parse_export_message(body: bytes | str) -> ExportRequest | ExportShardJob:
    kind = decode_body(body).get("kind")
    if kind == ExportShardJob.KIND:
        return ExportShardJob.parse(body)
    return ExportRequest.parse(body)
