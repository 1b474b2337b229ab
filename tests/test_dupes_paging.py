"""``corpus dupes --limit/--continuation`` on the in-memory store: every line once, O(page) rows per page."""

from __future__ import annotations

import hashlib
import random

import pytest

from corpus.app.dupes import MemberFilter, dupes_lines, dupes_page
from corpus.app.runtime import Runtime
from corpus.cli.common import CliError
from corpus.cli.dupes import _decode_place
from corpus.domain import dupindex as d
from corpus.store.tables import encode_continuation

DOMAIN = "birds"
CLUSTERS = 300


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def rt() -> Runtime:
    """300 clusters of 2-4 images (some exact copies, some near), written as ingest writes them."""
    rt = Runtime.in_memory()
    rt.ensure_resources()
    rnd = random.Random(19)
    for c in range(CLUSTERS):
        cluster = sha(f"cluster{c}")
        contents = [sha(f"c{c}-{k}") for k in range(rnd.randint(1, 3))]
        members = []
        for i in range(rnd.randint(2, 4)):
            content = contents[i % len(contents)]
            blob = f"original/s{c % 5}/v{1 + c % 2}/img{c}-{i}.jpg"
            members.append(d.Member(cluster, DOMAIN, blob, content, rnd.getrandbits(64)))
        rt.catalog.dupes.add_members(DOMAIN, members)
    return rt


@pytest.mark.parametrize("near", [True, False])
def test_pages_of_7_list_every_cluster_once_reading_rows_in_proportion_to_the_page(rt: Runtime, near: bool) -> None:
    dupes = rt.catalog.dupes
    everything = list(dupes_lines(dupes, DOMAIN, near=near))
    assert len(everything) > 200 if near else len(everything) > 100  # a few hundred lines to page through
    counter = dupes.table.rows_read
    pk = d.partition(DOMAIN)
    paged: list[dict[str, object]] = []
    start: str | None = None
    pages = 0
    most_read = 0
    while True:
        before = counter[pk]
        page = dupes_page(dupes, DOMAIN, near, 7, start)
        most_read = max(most_read, counter[pk] - before)
        pages += 1
        assert len(page.lines) <= 7
        paged += page.lines
        if page.next_key is None:
            break
        assert len(page.lines) == 7
        # through the CLI's codec, as a user would paste it back
        token = encode_continuation({"PartitionKey": pk, "RowKey": page.next_key})
        assert token is not None
        start = _decode_place(DOMAIN, token)
    assert paged == everything  # each line exactly once, in order
    assert pages == -(-len(everything) // 7)
    member_rows = sum(1 for _ in dupes.members(DOMAIN))
    # 7 lines of at most 4 members, and the start of the next: a bounded number of rows, not the domain
    print(f"rows read per page: at most {most_read} of {member_rows}")
    assert most_read <= 2 * (4 * 7 + 4), most_read
    assert most_read * 10 < member_rows


def test_a_filtered_page_resumes_where_it_stopped(rt: Runtime) -> None:
    dupes = rt.catalog.dupes
    keep = MemberFilter(version="v1")
    everything = list(dupes_lines(dupes, DOMAIN, near=True, keep=keep))
    paged: list[dict[str, object]] = []
    start = None
    while True:
        page = dupes_page(dupes, DOMAIN, True, 7, start, keep)
        paged += page.lines
        if page.next_key is None:
            break
        start = page.next_key
    assert paged == everything and everything
    assert all("/v1/" in str(m["blob"]) for line in paged for m in line["members"])  # type: ignore[attr-defined]


def test_a_foreign_or_forged_token_is_a_clear_error() -> None:
    other = encode_continuation({"PartitionKey": d.partition("cats"), "RowKey": d.MEMBERS[0] + "x"})
    assert other is not None
    with pytest.raises(CliError, match="corpus dupes --domain birds"):
        _decode_place(DOMAIN, other)
    band = encode_continuation({"PartitionKey": d.partition(DOMAIN), "RowKey": "b0!0000"})
    assert band is not None
    with pytest.raises(CliError, match="not a token"):
        _decode_place(DOMAIN, band)
    with pytest.raises(CliError, match="not a token"):
        _decode_place(DOMAIN, "%%%")
