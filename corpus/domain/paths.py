"""The naming contract between staging, the corpus containers and the metadata.

Everything here is pure: a staged blob name goes in, a typed description of where the image
belongs comes out, or a :class:`InvalidNameError` that says in plain words why the name does not fit.

Staging:   ``<domain>/<version>/<dir…>/<file>``              (container ``staging``)
Original:  ``original/<dir…>/<version>/<file>``              (container ``<domain>``)
Transform: ``transform/<name>/<tversion>/<dir…>/<version>/<file>``

``<dir…>`` may be empty (the root set of a version); then no empty segment is written.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from corpus.domain.errors import InvalidNameError
from corpus.domain.limits import MAX_BLOB_NAME, MAX_BLOB_SEGMENTS, MAX_COPY_SOURCE_URL

MAX_TRANSFORM_FIELD = 64
"""Characters of a transform name and of its version (:func:`validate_version`)."""

TRANSFORMED_SUFFIX_ROOM = 16
"""Characters a transform may add to a file name (an output extension such as ``.jpeg``)."""

WORST_ACCOUNT_BLOB_URL = "https://" + "a" * 24 + ".blob.core.windows.net/"
"""The longest public-cloud blob endpoint (account names have at most 24 characters), for checks
made where the real endpoint is unknown (``corpus upload`` before it connects)."""

_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Control characters, lone surrogates (undecodable file names) and line/paragraph separators."""

ROOT_PATH = "<root>"
"""How the root set (empty ``<dir…>``) is shown in tables and on the command line."""

CONTAINER_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
"""Azure's rule for a container name, and a queue's (the same): 3-63 lower-case letters, digits
and single dashes, neither first nor last. A domain is a container, so its name obeys it."""
_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

JUNK_FILE_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
"""File names that operating systems scatter into folders; removed from staging and counted."""

RESERVED_DOMAINS_PREFIXES = ("azure-webjobs", "scm-releases")
"""Container names the Functions host uses itself: a domain may never be one of them."""


@dataclass(frozen=True, slots=True)
class SetRef:
    """One image set: a directory of a domain at a version, optionally transformed."""

    domain: str
    dirs: tuple[str, ...]
    version: str

    @property
    def path(self) -> str:
        """The directory path as the user wrote it, ``<root>`` for the root set."""
        return "/".join(self.dirs) if self.dirs else ROOT_PATH

    @property
    def dir_prefix(self) -> str:
        """``a/b/`` for dirs (a, b); empty for the root set, so no double slash appears."""
        return "".join(d + "/" for d in self.dirs)

    def original_prefix(self) -> str:
        """Blob prefix of this set's originals inside the domain container."""
        return f"original/{self.dir_prefix}{self.version}/"

    def transform_prefix(self, name: str, tversion: str) -> str:
        """Blob prefix of this set transformed by ``name`` at ``tversion``."""
        return f"transform/{name}/{tversion}/{self.dir_prefix}{self.version}/"


@dataclass(frozen=True, slots=True)
class StagedName:
    """A staged blob name, parsed and validated."""

    name: str
    set: SetRef
    file: str

    @property
    def original_blob(self) -> str:
        return self.set.original_prefix() + self.file


def validate_domain(domain: str) -> str:
    """Return ``domain`` if it is a valid container name usable as a corpus domain."""
    if not CONTAINER_NAME_RE.match(domain):
        raise InvalidNameError(
            f"invalid domain {domain!r}: a domain names a container: 3-63 characters, "
            "lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
        )
    if domain.startswith(RESERVED_DOMAINS_PREFIXES):
        raise InvalidNameError(f"invalid domain {domain!r}: reserved for the Functions host")
    return domain


def validate_version(version: str, what: str = "version") -> str:
    """Return ``version`` if it is 1-64 characters of ``[A-Za-z0-9._-]`` and not a dot segment."""
    if not _VERSION_RE.match(version) or version.endswith("."):
        raise InvalidNameError(
            f"invalid {what} {version!r}: 1-64 characters of letters, digits, '.', '_' or '-', not ending in '.'"
        )
    return version


def is_junk_file(file_name: str) -> bool:
    """True for OS litter (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._x``)."""
    lowered = file_name.casefold()
    return lowered in JUNK_FILE_NAMES or lowered.startswith("._")


DOT_SEGMENT_REASON = (
    "the name has a '.' or '..' segment: storage clients resolve such a URL to another blob "
    "(even another container), so it is neither copied, moved nor deleted; remove it from staging with "
    "a tool that sends the name unchanged and upload it again under a plain name"
)


def has_dot_segment(name: str) -> bool:
    """True when a '/'-separated segment of ``name`` is '.' or '..' (issue 25 R9)."""
    return any(segment in (".", "..") for segment in name.split("/"))


def parse_staged_name(name: str, *, reserved: frozenset[str] = frozenset()) -> StagedName:
    """Parse a blob name relative to the staging container.

    ``reserved`` holds container names that cannot be domains (staging itself, the rejected
    container), since an image there would be re-ingested or mistaken for a rejection.
    """
    if not name or name.endswith("/"):
        raise InvalidNameError(f"{name!r} is a folder marker, not a file")
    segments = name.split("/")
    if len(segments) < 3:
        raise InvalidNameError(f"{name!r} has too few path segments: expected <domain>/<version>/[<dir>/…]<file>")
    for segment in segments:
        if segment in (".", ".."):
            raise InvalidNameError(f"{name!r}: {DOT_SEGMENT_REASON}")
        if not segment:
            raise InvalidNameError(f"{name!r} contains an empty path segment ('//' or a leading '/')")
        if segment.endswith("."):
            # Azure's naming rules: a segment ending in '.' may be trimmed, so 'a./x' would become 'a/x'.
            raise InvalidNameError(f"{name!r}: the path segment {segment!r} ends in '.', which Azure does not allow")
        bad = next((ch for ch in segment if unicodedata.category(ch) in _BAD_CATEGORIES), None)
        if bad is not None:
            raise InvalidNameError(f"{name!r} contains the control character U+{ord(bad):04X}")
    domain, version, *dirs, file = segments
    validate_domain(domain)
    if domain in reserved:
        raise InvalidNameError(f"invalid domain {domain!r}: that container is used by the pipeline itself")
    validate_version(version)
    if not file.strip():
        raise InvalidNameError(f"{name!r} has an empty file name")
    # Corpus names are NFC: 'café' typed on macOS (NFD) and on Windows (NFC) is one name, and two
    # uploads that differ only by normalisation are the same image or a conflict, never two images.
    nfc_dirs = tuple(unicodedata.normalize("NFC", d) for d in dirs)
    staged = StagedName(name=name, set=SetRef(domain, nfc_dirs, version), file=unicodedata.normalize("NFC", file))
    check_derived_names(staged)
    return staged


def _utf16_len(text: str) -> int:
    """Azure counts a blob name's characters as UTF-16 code units (an emoji counts twice)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def worst_derived_name(staged: StagedName) -> str:
    """The longest blob name this image can ever get: its transformed name under the longest
    transform name and version, with room for a changed extension."""
    ref = staged.set
    t = "t" * MAX_TRANSFORM_FIELD
    return ref.transform_prefix(t, t) + staged.file + "x" * TRANSFORMED_SUFFIX_ROOM


def check_derived_names(staged: StagedName) -> None:
    """Refuse a name whose original or any transformed name would break Azure's blob-name limits
    (1,024 characters, 254 segments); Azurite accepts longer ones, Azure does not."""
    for what, derived in (("original", staged.original_blob), ("transformed", worst_derived_name(staged))):
        if _utf16_len(derived) > MAX_BLOB_NAME:
            raise InvalidNameError(
                f"{staged.name!r} is too long: its {what} name can reach {_utf16_len(derived)} characters, "
                f"above Azure's limit of {MAX_BLOB_NAME} for a blob name"
            )
        segments = derived.count("/") + 1
        if segments > MAX_BLOB_SEGMENTS:
            raise InvalidNameError(
                f"{staged.name!r} is too deep: its {what} name can reach {segments} path segments, "
                f"above Azure's limit of {MAX_BLOB_SEGMENTS}"
            )


def copy_source_url_length(container_url: str, name: str) -> int:
    """Length of the percent-encoded URL of blob ``name`` in ``container_url``, as Copy Blob sends it."""
    return len(container_url.rstrip("/")) + 1 + len(quote(name.encode("utf-8", "surrogatepass"), safe="/~"))


def check_copy_source(container_url: str, name: str) -> None:
    """Refuse a staged name whose URL is too long to be the source of a server-side copy (2 KiB)."""
    n = copy_source_url_length(container_url, name)
    if n > MAX_COPY_SOURCE_URL:
        raise InvalidNameError(
            f"{name!r} is too long to copy: its percent-encoded URL has {n} characters, above Copy Blob's "
            f"limit of {MAX_COPY_SOURCE_URL} (non-ASCII characters take up to 12 each; shorten the path)"
        )
