"""``corpus reindex --facts``: facts and duplicate-index rows for images ingested before they existed.

Walks every set (a page of sets at a time, resumable from the token printed after each page),
originals before their transforms as the sets table orders them, and for each image record without
facts: reads the blob, decodes it exactly as ingest does (:func:`corpus.domain.images.inspect`,
the decompression-bomb cap included), indexes it when it is an original
(:func:`corpus.app.dupes.index_original`) and merges facts and cluster into the record
(:meth:`corpus.store.images_table.ImagesTable.add_facts`).

* **Idempotent**: an image with facts is skipped; indexing and the merge write the same values
  twice; two backfills at once, or a backfill beside ingest, agree.
* **Resumable**: progress (with the continuation token) is reported after each page of sets;
  ``--resume TOKEN`` starts there, and anything done past it is skipped as already done.
* **Bounded memory**: one page of sets and one page of image records, and one image's bytes
  per worker, whatever the size of the corpus.
* An image that can no longer be decoded, or whose bytes no longer match the recorded size and
  MD5 (facts would then describe other bytes than the record's), is counted as ``failed`` with
  its reason and left without facts; it never stops the others. ``corpus verify`` finds such blobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from corpus.app.dupes import index_original
from corpus.app.migrate import PageProgress
from corpus.domain.errors import ConflictError, CorpusError
from corpus.domain.images import inspect
from corpus.store.catalog import Catalog
from corpus.store.rows import ImageRow, ImageSetRow

THREADS = 4


@dataclass
class FactsProgress(PageProgress):
    images: int = 0
    filled: int = 0
    skipped: int = 0


def backfill_facts(
    catalog: Catalog,
    read: Callable[[str, str], bytes],
    max_pixels: int,
    domain: str | None = None,
    continuation: str | None = None,
    page: int = 100,
) -> Iterator[FactsProgress]:
    """Fill in facts set by set; yields progress after each page of sets (see the module docstring).
    ``read(container, blob)`` returns a blob's bytes."""
    progress = FactsProgress(continuation=continuation)

    def fill(row: ImageSetRow, image: ImageRow) -> str | None:
        data = read(row.domain, image.blob)
        check_recorded_bytes(image, data)
        info = inspect(data, max_pixels)
        assert info.facts is not None
        cluster = None
        if row.transform is None:
            cluster = index_original(catalog.dupes, row.domain, image.blob, image.md5, info.facts)
        catalog.images.add_facts(row.ref, replace(image, facts=info.facts, cluster=cluster), row.transform)
        return None

    def attempt(args: tuple[ImageSetRow, ImageRow]) -> str | None:
        row, image = args
        try:
            return fill(row, image)
        except (CorpusError, OSError) as exc:
            return f"{row.domain}/{image.blob}: {exc}"

    with ThreadPoolExecutor(THREADS) as pool:
        for rows, token in catalog.sets.scan_all(domain, continuation, page):
            for row in rows:
                todo: list[tuple[ImageSetRow, ImageRow]] = []
                for image in catalog.images.iter(row.ref, row.transform):
                    progress.images += 1
                    if image.facts is not None and (row.transform is not None or image.cluster is not None):
                        progress.skipped += 1
                        continue
                    todo.append((row, image))
                    if len(todo) >= page:
                        _run(pool, attempt, todo, progress)
                        todo = []
                _run(pool, attempt, todo, progress)
                progress.sets += 1
            progress.continuation = token
            yield progress


def check_recorded_bytes(image: ImageRow, data: bytes) -> None:
    """Raise :class:`ConflictError` unless ``data`` has the image record's size and MD5."""
    got = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if len(data) != image.size or got != image.md5:
        raise ConflictError(
            f"blob is {len(data)} bytes MD5 {got}, its record says {image.size} bytes MD5 {image.md5}: "
            "changed since it was recorded (run `corpus verify`); no facts written"
        )


def _run(
    pool: ThreadPoolExecutor,
    attempt: Callable[[tuple[ImageSetRow, ImageRow]], str | None],
    todo: list[tuple[ImageSetRow, ImageRow]],
    progress: FactsProgress,
) -> None:
    for failure in pool.map(attempt, todo):
        if failure is None:
            progress.filled += 1
            continue
        progress.fail(failure)
