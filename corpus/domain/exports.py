"""Messages of queue ``export-requests`` (``CORPUS_EXPORT_QUEUE``): a request, and one job per shard.

Both kinds travel on the one queue. A request names a training set and a format; its handler
plans the shards (a pure function of the manifest, :func:`corpus.domain.layouts.plan_shards`) and
sends one :class:`ExportShardJob` per shard, which carries only the shard's coordinates (split,
index, first ordinal, count), never a list of keys, so a message stays small whatever the shard size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from corpus.domain.errors import MessageError
from corpus.domain.manifest import parse_ref
from corpus.domain.messages import Fields, decode_body

FORMATS = ("webdataset", "azureml")
MIN_SHARD_BYTES = 16 * 1024
MAX_SHARD_BYTES = 16 * 1024**3
MAX_SHARDS = 20_000
"""Shard jobs one request may fan out: sending them must fit in one invocation's time."""


def _trainset(f: Fields, where: str) -> tuple[str, str]:
    t = Fields(f.any("trainset", dict), f"{where}: trainset")
    name, version = t.str("name"), t.str("version")
    t.done()
    return parse_ref(f"{name}:{version}")


@dataclass(frozen=True, slots=True)
class ExportRequest:
    name: str
    version: str
    format: str
    shard_size: int = 500 * 1000 * 1000
    datastore: str | None = None

    KIND = "export"

    def to_json(self) -> str:
        body = {
            "kind": self.KIND,
            "v": 1,
            "trainset": {"name": self.name, "version": self.version},
            "format": self.format,
            "shard_size": self.shard_size,
        }
        if self.datastore:
            body["datastore"] = self.datastore
        return json.dumps(body, ensure_ascii=False, sort_keys=True)

    @classmethod
    def parse(cls, body: bytes | str) -> ExportRequest:
        f = Fields(decode_body(body), "export request")
        if f.str("kind") != cls.KIND or f.int("v") != 1:
            raise MessageError("export request: expected kind 'export', v 1")
        name, version = _trainset(f, "export request")
        req = cls(name, version, f.str("format"), f.int("shard_size", required=False, default=500 * 1000 * 1000),
                  f.str("datastore", required=False))  # fmt: skip
        f.done()
        if req.format not in FORMATS:
            raise MessageError(f"export request: format must be one of {', '.join(FORMATS)}")
        if not MIN_SHARD_BYTES <= req.shard_size <= MAX_SHARD_BYTES:
            raise MessageError(f"export request: shard_size must be between {MIN_SHARD_BYTES} and {MAX_SHARD_BYTES} bytes")
        if req.datastore is not None and (not req.datastore or len(req.datastore) > 255 or "/" in req.datastore):
            raise MessageError("export request: datastore must be 1-255 characters without '/'")
        return req


@dataclass(frozen=True, slots=True)
class ExportShardJob:
    name: str
    version: str
    split: str
    index: int
    start: int
    count: int
    shard_size: int

    KIND = "export-shard"

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.KIND,
                "v": 1,
                "trainset": {"name": self.name, "version": self.version},
                "split": self.split,
                "index": self.index,
                "start": self.start,
                "count": self.count,
                "shard_size": self.shard_size,
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def parse(cls, body: bytes | str) -> ExportShardJob:
        f = Fields(decode_body(body), "export shard job")
        if f.str("kind") != cls.KIND or f.int("v") != 1:
            raise MessageError("export shard job: expected kind 'export-shard', v 1")
        name, version = _trainset(f, "export shard job")
        job = cls(name, version, f.str("split", required=False, default=""), f.int("index"), f.int("start"), f.int("count"),
                  f.int("shard_size"))  # fmt: skip
        f.done()
        if job.index < 0 or job.start < 0 or job.count <= 0:
            raise MessageError("export shard job: index and start must be >= 0, count > 0")
        return job


def parse_export_message(body: bytes | str) -> ExportRequest | ExportShardJob:
    kind = decode_body(body).get("kind")
    if kind == ExportShardJob.KIND:
        return ExportShardJob.parse(body)
    return ExportRequest.parse(body)
