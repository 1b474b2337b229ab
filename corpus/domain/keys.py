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
