"""What an export says about itself: a Croissant 1.0 JSON-LD file and a Hugging Face dataset card.

Pure functions of the export's plan and its files' SHA-256s, so a re-run writes the same bytes.

* ``croissant.json`` (every export): ``distribution`` lists every data file of the export as a
  ``cr:FileObject`` with its ``sha256`` (relative ``contentUrl``); a ``splits`` record set
  (``cr:Split``) names the splits; a record set describes the samples (per format: Parquet
  columns, the ``.json`` members of the WebDataset shards, or the Azure ML JSONL lines).
* ``README.md`` (Parquet exports): YAML header with ``configs`` (one ``data_files`` glob per
  split) and ``dataset_info.features`` (``image``: Image, ``label``: ClassLabel with the names in
  index order), the card ``datasets`` and the Hub read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
"""Croissant 1.0's standard ``@context`` (as ``mlcroissant`` writes it)."""

SPLIT_URLS = {
    "train": "cr:TrainingSplit",
    "val": "cr:ValidationSplit",
    "validation": "cr:ValidationSplit",
    "test": "cr:TestSplit",
}
ENCODINGS = {
    ".tar": "application/x-tar",
    ".parquet": "application/x-parquet",
    ".jsonl": "application/jsonlines",
    ".json": "application/json",
    ".txt": "text/plain",
    ".md": "text/markdown",
}


@dataclass(frozen=True, slots=True)
class ExportFile:
    """A file of an export: its path relative to the export's folder, size and SHA-256 (hex)."""

    path: str
    size: int
    sha256: str

    @property
    def encoding(self) -> str:
        for suffix, enc in ENCODINGS.items():
            if self.path.endswith(suffix):
                return enc
        return "application/x-yaml" if self.path.rpartition("/")[2] == "MLTable" else "application/octet-stream"


BYTES = {"jsonPath": "bytes"}


def _field(rs: str, name: str, data_type: str, source: dict[str, Any], description: str = "") -> dict[str, Any]:
    f: dict[str, Any] = {"@type": "cr:Field", "@id": f"{rs}/{name}", "name": name, "dataType": data_type, "source": source}
    if description:
        f["description"] = description
    return f


def _samples(fields: list[dict[str, Any]], description: str = "") -> dict[str, Any]:
    """The ``samples`` record set of these fields (``description`` before them when given)."""
    rs: dict[str, Any] = {"@type": "cr:RecordSet", "@id": "samples", "name": "samples"}
    if description:
        rs["description"] = description
    rs["field"] = fields
    return rs


def _splits(splits: Sequence[str]) -> dict[str, Any]:
    return {
        "@type": "cr:RecordSet",
        "@id": "splits",
        "name": "splits",
        "dataType": "cr:Split",
        "key": {"@id": "splits/name"},
        "field": [
            {"@type": "cr:Field", "@id": "splits/name", "name": "name", "dataType": "sc:Text"},
            {"@type": "cr:Field", "@id": "splits/url", "name": "url", "dataType": "sc:URL"},
        ],
        "data": [{"splits/name": s, "splits/url": SPLIT_URLS.get(s, f"cr:{s}")} for s in splits],
    }


def croissant(
    *,
    name: str,
    version: str,
    export_id: str,
    fmt: str,
    files: Sequence[ExportFile],
    splits: Sequence[str],
    classes: Sequence[str],
    samples: int,
) -> dict[str, Any]:
    """The Croissant 1.0 description of an export (see the module docstring)."""
    dist: list[dict[str, Any]] = [
        {
            "@type": "cr:FileObject",
            "@id": f.path,
            "name": f.path,
            "contentUrl": f.path,
            "contentSize": f"{f.size} B",
            "encodingFormat": f.encoding,
            "sha256": f.sha256,
        }
        for f in sorted(files, key=lambda f: f.path)
    ]
    records: list[dict[str, Any]] = [_splits(splits)]
    if fmt == "parquet":
        dist.append({"@type": "cr:FileSet", "@id": "parquet-files", "name": "parquet-files",
                     "encodingFormat": "application/x-parquet", "includes": "data/*.parquet"})  # fmt: skip
        src = {"fileSet": {"@id": "parquet-files"}}
        records.append(
            _samples(
                [
                    _field(
                        "samples",
                        "image",
                        "sc:ImageObject",
                        {**src, "extract": {"column": "image"}, "transform": {"jsonPath": "bytes"}},
                    ),
                    _field("samples", "label", "sc:Integer", {**src, "extract": {"column": "label"}}, "index into classes.txt"),
                    _field("samples", "blob", "sc:Text", {**src, "extract": {"column": "blob"}}),
                    _field("samples", "split", "sc:Text", {**src, "extract": {"column": "split"}}),
                ],
            )
        )
    elif fmt == "webdataset":
        tars = [f.path for f in files if f.path.endswith(".tar")]
        dist.append({"@type": "cr:FileSet", "@id": "sample-metadata", "name": "sample-metadata",
                     "containedIn": [{"@id": t} for t in sorted(tars)],
                     "encodingFormat": "application/json", "includes": "*.json"})  # fmt: skip
        src = {"fileSet": {"@id": "sample-metadata"}}
        records.append(
            _samples(
                [
                    _field("samples", "key", "sc:Text", {**src, "extract": {"jsonPath": "$.__key__"}}),
                    _field("samples", "blob", "sc:Text", {**src, "extract": {"jsonPath": "$.blob"}}),
                    _field("samples", "split", "sc:Text", {**src, "extract": {"jsonPath": "$.split"}}),
                ],
                "one <key>.json member per sample; <key>.cls holds the class index, <key>.<ext> the image",
            )
        )
    else:
        dist.append({"@type": "cr:FileSet", "@id": "jsonl-files", "name": "jsonl-files",
                     "encodingFormat": "application/jsonlines", "includes": "*/images.jsonl"})  # fmt: skip
        src = {"fileSet": {"@id": "jsonl-files"}}
        records.append(
            _samples(
                [
                    _field("samples", "image_url", "sc:URL", {**src, "extract": {"column": "image_url"}}),
                    _field("samples", "label", "sc:Text", {**src, "extract": {"column": "label"}}),
                ],
            )
        )
    return {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "name": f"{name}-{version}-{export_id}",
        "description": (
            f"Training set {name}:{version} exported by corpus as {fmt} ({export_id}): {samples} samples, "
            f"{len(classes)} classes ({', '.join(classes[:20])}{'…' if len(classes) > 20 else ''})."
        ),
        "version": "1.0.0",
        "citeAs": f"corpus training set {name}:{version}, export {export_id}",
        "url": f"corpus://exports/{name}/{version}/{export_id}/",
        "license": "https://spdx.org/licenses/NOASSERTION",
        "distribution": dist,
        "recordSet": records,
    }


def dataset_card(*, name: str, version: str, export_id: str, splits: Sequence[str], classes: Sequence[str],
                 counts: dict[str, int]) -> str:  # fmt: skip
    """The ``README.md`` of a Parquet export: a Hugging Face dataset card with its YAML header."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for s in splits:
        lines += [f"  - split: {s}", f"    path: data/{s}-*.parquet"]
    lines += ["dataset_info:", "  features:", "  - name: image", "    dtype: image", "  - name: label", "    dtype:",
              "      class_label:", "        names:"]  # fmt: skip
    lines += [f"          '{i}': {json.dumps(c, ensure_ascii=False)}" for i, c in enumerate(classes)]
    lines += ["  - name: blob", "    dtype: string", "  - name: split", "    dtype: string", "  splits:"]
    for s in splits:
        lines += [f"  - name: {s}", f"    num_examples: {counts.get(s, 0)}"]
    lines += ["---", "", f"# {name}:{version} ({export_id})", "",
              f"Training set `{name}:{version}` exported by corpus as Parquet: columns `image` (Image), `label`",
              "(ClassLabel, names in `classes.txt` order), `blob` and `split`. Load it with:", "", "```python",
              "from datasets import load_dataset", "",
              "ds = load_dataset(\"parquet\", data_files={" + ", ".join(f'"{s}": "data/{s}-*.parquet"' for s in splits) + "})",
              "```", "", "`croissant.json` describes every file with its SHA-256.", ""]  # fmt: skip
    return "\n".join(lines)
