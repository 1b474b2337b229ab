"""Table keys: an injective, always-legal encoding of arbitrary strings.

Azure Table keys may not contain ``/ \\ # ?`` nor control characters, and are limited to 1 KiB.
User paths contain all of those. A lossy replacement (``/`` → ``_``) would make ``a/b`` and
``a_b`` the same set, so every field is escaped with a prefix-free code:

* ``[A-Za-z0-9._-]`` stand for themselves;
* every other UTF-8 byte becomes ``~XX`` (upper-case hex), ``~`` included;
* a field whose escaped form exceeds :data:`MAX_FIELD` characters keeps a readable head and
  ends in ``*`` plus a SHA-256 digest of the whole original field. ``*`` never occurs in an
  escaped field, so a hashed field can't equal a short one.

Fields are joined with ``!``, which never occurs inside a field either: the composed key is
injective as long as its fields are. Keys also sort by their escaped form, which keeps a
partition's rows grouped in a stable, readable order.
"""

from __future__ import annotations

import hashlib
import string

from corpus.domain.paths import SetRef

MAX_FIELD = 200
SEPARATOR = "!"
_SAFE = frozenset(string.ascii_letters + string.digits + "._-")
_HEAD = 120


def escape(value: str) -> str:
    """Escape one field; see the module docstring for the code."""
    out: list[str] = []
    for char in value:
        if char in _SAFE:
            out.append(char)
        else:
            out.extend(f"~{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    escaped = "".join(out)
    if len(escaped) <= MAX_FIELD:
        return escaped
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    head = escaped[:_HEAD]
    # Never cut an escape sequence in half: that would leave a dangling '~'.
    tilde = head.rfind("~", len(head) - 2)
    if tilde != -1:
        head = head[:tilde]
    return f"{head}*{digest}"


def unescape(field: str) -> str:
    """Invert :func:`escape` for fields that were not hashed."""
    if "*" in field:
        raise ValueError("a hashed key field cannot be decoded; read the entity's properties")
    raw = bytearray()
    i = 0
    while i < len(field):
        if field[i] == "~":
            raw.append(int(field[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(field[i].encode("ascii"))
            i += 1
    return raw.decode("utf-8", "surrogatepass")


def compose(*fields: str) -> str:
    """Join escaped fields into one key."""
    return SEPARATOR.join(escape(f) for f in fields)


def set_row_key(ref: SetRef, transform: tuple[str, str] | None = None) -> str:
    """Row key of an ImageSet inside its domain's partition.

    Originals: ``o!<path>!<version>``; transformed: ``t!<name>!<tversion>!<path>!<version>``.
    The path field is the joined ``<dir…>`` (empty for the root set), so ``a/b`` and ``a_b`` differ.
    """
    path = "/".join(ref.dirs)
    if transform is None:
        return "o" + SEPARATOR + compose(path, ref.version)
    name, tversion = transform
    return "t" + SEPARATOR + compose(name, tversion, path, ref.version)


def image_partition_key(ref: SetRef, transform: tuple[str, str] | None = None) -> str:
    """Partition of the Images table holding one set's per-image records and counters."""
    return escape(ref.domain) + SEPARATOR + set_row_key(ref, transform)


def source_partition_key(ref: SetRef, what: str) -> str:
    """Partition of the Images table holding the distinct-source markers of one original set for
    one operation or transform label ``what``: ``<domain>!s!<what>!<path>!<version>``. Set row keys
    start with ``o!`` or ``t!``, so no set's image partition can equal it."""
    return escape(ref.domain) + SEPARATOR + "s" + SEPARATOR + compose(what, "/".join(ref.dirs), ref.version)


def is_source_partition(partition_key: str) -> bool:
    """True for a partition of source markers (:func:`source_partition_key`), not a set's images."""
    _, sep, rest = partition_key.partition(SEPARATOR)
    return bool(sep) and rest.startswith("s" + SEPARATOR)


def image_row_key(file: str) -> str:
    """Row key of one image inside its set's partition."""
    return escape(file)


COUNTER_PREFIX = SEPARATOR + "count" + SEPARATOR
"""Counter rows share the set's partition; an escaped file name never starts with ``!``."""


def counter_row_key(shard: int) -> str:
    return f"{COUNTER_PREFIX}{shard:02d}"


def transform_keys(name: str, tversion: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of an ImageTransforms entity."""
    return escape(name), escape(tversion)


INDEX_PREFIX = "x" + SEPARATOR
"""Tag-index rows share the ``ImageSets`` partition (the domain) with the sets they index:
``x!<tag>!<set row key>``. Set rows start with ``o!`` or ``t!``, so every set row sorts below
``x!`` and ``RowKey lt 'x!'`` selects exactly the sets of a partition."""

SETS_UPPER = INDEX_PREFIX
"""Exclusive upper bound of set row keys in an ``ImageSets`` partition."""


def after(prefix: str) -> str:
    """The least string above every string starting with ``prefix`` (whose last character is ``!``)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def successor(key: str) -> str:
    """The least key above ``key`` among keys built here: every character of an escaped or composed
    key is above the space, so ``key + " "`` sorts right after ``key`` and before any extension of it
    (a space is legal in Table keys and in filters, unlike a control character)."""
    return key + " "


def tag_index_prefix(tag: str, set_prefix: str = "") -> str:
    """Start of one tag's index range, optionally narrowed to sets whose row key starts with
    ``set_prefix`` (``o!`` originals, ``t!<name>!`` or ``t!<name>!<tversion>!`` transformed).
    ``tag`` must be normalised (:func:`corpus.domain.tags.normalize_tag`)."""
    return INDEX_PREFIX + escape(tag) + SEPARATOR + set_prefix


def tag_index_row_key(tag: str, set_key: str) -> str:
    return tag_index_prefix(tag) + set_key


def set_key_of_index(tag: str, index_key: str) -> str:
    """The set row key an index row points to."""
    return index_key[len(tag_index_prefix(tag)) :]


ORIGINALS_PREFIX = "o" + SEPARATOR


def transform_set_prefix(name: str = "", tversion: str = "") -> str:
    """Row-key prefix of transformed sets: all, of one transform, or of one (name, version)."""
    prefix = "t" + SEPARATOR
    if name:
        prefix += escape(name) + SEPARATOR
        if tversion:
            prefix += escape(tversion) + SEPARATOR
    return prefix


PAGE_MARKER_PREFIX = SEPARATOR + "page" + SEPARATOR
"""Page markers live in ``ImageTransforms`` under partitions no transform name can produce
(an escaped name never contains ``!``)."""


def page_marker_partition(request: str) -> str:
    return PAGE_MARKER_PREFIX + escape(request)
