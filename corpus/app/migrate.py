"""Schema migrations: named, resumable, idempotent steps that bring old rows up to a schema version.

Every row carries the schema version it was written at (property ``Schema``,
:attr:`corpus.store.rows.Columns.schema`; a row without it was written before versions existed,
version 0). The code reads every version it may meet (a missing column reads as its default);
a step is only needed when old rows must *gain* something the code now relies on. A step:

* walks its rows a page at a time and yields :class:`MigrateProgress` after each page of sets,
  with a continuation token (``corpus migrate STEP --resume TOKEN`` carries on after a stop);
* does, for each row below its version, writes that are harmless to repeat (insert-only markers,
  merges of one property), and stamps the row's ``Schema`` last: a step killed anywhere and run
  again redoes at most the rows it had not stamped, and a second full run writes nothing;
* runs beside the function app: new rows are written at the new version already.

See docs/schema.md for how to add a column or a step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from corpus.domain.errors import InvalidNameError
from corpus.store.catalog import Catalog
from corpus.store.ports import BlobStore

SET_PAGE = 100
SOURCE_VERSION = 2
"""``ImageRow`` version 2: a transformed image's source is counted by the source markers."""


@dataclass(frozen=True)
class Context:
    """What a step may use: the tables, and for steps that read images, the blobs."""

    catalog: Catalog
    blobs: BlobStore | None = None
    max_pixels: int = 0


MAX_FAILURES_SHOWN = 20


@dataclass(kw_only=True)
class PageProgress:
    """What a resumable walk over the sets (a step, or the facts backfill) reports after each page
    of sets: the sets walked, the failures with the first :data:`MAX_FAILURES_SHOWN` reasons, and
    the token that resumes after the page (``None`` at the end)."""

    sets: int = 0
    failed: int = 0
    examples: list[str] = field(default_factory=list)
    continuation: str | None = None

    def fail(self, reason: str) -> None:
        """Count one failure; keep its reason while fewer than :data:`MAX_FAILURES_SHOWN` are kept."""
        self.failed += 1
        if len(self.examples) < MAX_FAILURES_SHOWN:
            self.examples.append(reason)

    def as_json(self) -> dict[str, object]:
        """Every field under its own name (a copy: the JSON output)."""
        return asdict(self)


@dataclass
class MigrateProgress(PageProgress):
    step: str
    rows_below: int = 0
    """Rows found below the step's version (or lacking its column)."""
    rows_migrated: int = 0


Run = Callable[[Context, str | None, str | None], Iterator[MigrateProgress]]


@dataclass(frozen=True)
class Step:
    name: str
    table: str
    version: int | None
    """The schema version it stamps; None: the column it fills says which rows are done."""
    summary: str
    run: Run


def _source_markers(ctx: Context, domain: str | None, continuation: str | None) -> Iterator[MigrateProgress]:
    """Images rows of transformed sets below version 2: mark their source originals
    (:meth:`~corpus.store.catalog.Catalog.mark_sources`, insert-only), then stamp version 2."""
    catalog = ctx.catalog
    progress = MigrateProgress(SOURCE_MARKERS.name, continuation=continuation)
    for rows, token in catalog.sets.scan_all(domain, continuation, SET_PAGE):
        for row in rows:
            progress.sets += 1
            if row.transform is None:
                continue
            for page in catalog.images.pages_below(row.ref, row.transform, SOURCE_VERSION):
                if not page:
                    continue
                progress.rows_below += len(page)
                catalog.mark_sources(row.ref, row.transform, [image.source for _, image in page])
                stamped = catalog.images.stamp_schema(row.ref, row.transform, [rk for rk, _ in page], SOURCE_VERSION)
                progress.rows_migrated += stamped
        progress.continuation = token
        yield progress


SOURCE_MARKERS = Step(
    "source-markers",
    "Images",
    SOURCE_VERSION,
    "count the source originals of transformed images recorded before the source markers "
    "(what 'corpus count --op/--transform' reads), then stamp the rows Schema 2",
    _source_markers,
)


def _facts(ctx: Context, domain: str | None, continuation: str | None) -> Iterator[MigrateProgress]:
    """The facts backfill (:func:`corpus.app.backfill.backfill_facts`, also ``corpus reindex
    --facts``) as a step: same walk, same continuation tokens. Its "row below the version" is a
    row without facts (an original also without its duplicate cluster): the column itself says it,
    so it needs no stamp, and rows that gain facts another way (ingest, transform jobs) are skipped."""
    from corpus.app.backfill import backfill_facts

    blobs = ctx.blobs
    if blobs is None:
        raise InvalidNameError("migration step 'facts' reads images: it needs the blob store")

    def read(container: str, blob: str) -> bytes:
        return bytes(blobs.read(container, blob).data)

    for p in backfill_facts(ctx.catalog, read, ctx.max_pixels, domain, continuation):
        yield MigrateProgress(
            FACTS.name,
            p.filled + p.failed,
            p.filled,
            sets=p.sets,
            failed=p.failed,
            examples=list(p.examples),
            continuation=p.continuation,
        )


FACTS = Step(
    "facts",
    "Images",
    None,
    "image facts (sha256, phash, dhash, quality) and the duplicate index for images recorded before "
    "facts existed; reads each such image (the same as 'corpus reindex --facts')",
    _facts,
)

STEPS: dict[str, Step] = {s.name: s for s in (SOURCE_MARKERS, FACTS)}


def step(name: str) -> Step:
    found = STEPS.get(name)
    if found is None:
        raise InvalidNameError(f"no migration step {name!r}; the steps are: {', '.join(STEPS)}")
    return found


def migrate(
    catalog: Catalog | Context, name: str, domain: str | None = None, continuation: str | None = None
) -> Iterator[MigrateProgress]:
    """Run step ``name`` (over one domain, or all), from ``continuation`` if given; progress after each page."""
    ctx = catalog if isinstance(catalog, Context) else Context(catalog)
    return step(name).run(ctx, domain, continuation)
