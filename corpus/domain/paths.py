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
from dataclasses import dataclass

from corpus.domain.errors import InvalidNameError

ROOT_PATH = "<root>"
"""How the root set (empty ``<dir…>``) is shown in tables and on the command line."""

_DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
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
    if not _DOMAIN_RE.match(domain):
        raise InvalidNameError(
            f"invalid domain {domain!r}: a domain names a container: 3-63 characters, "
            "lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
        )
    if domain.startswith(RESERVED_DOMAINS_PREFIXES):
        raise InvalidNameError(f"invalid domain {domain!r}: reserved for the Functions host")
    return domain


def validate_version(version: str, what: str = "version") -> str:
    """Return ``version`` if it is 1-64 characters of ``[A-Za-z0-9._-]`` and not a dot segment."""
    if not _VERSION_RE.match(version) or version in (".", ".."):
        raise InvalidNameError(
            f"invalid {what} {version!r}: 1-64 characters of letters, digits, '.', '_' or '-' (and not '.' or '..')"
        )
    return version


def is_junk_file(file_name: str) -> bool:
    """True for OS litter (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._x``)."""
    lowered = file_name.casefold()
    return lowered in JUNK_FILE_NAMES or lowered.startswith("._")


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
            raise InvalidNameError(f"{name!r} contains a '.' or '..' segment")
        if not segment:
            raise InvalidNameError(f"{name!r} contains an empty path segment ('//' or a leading '/')")
    domain, version, *dirs, file = segments
    validate_domain(domain)
    if domain in reserved:
        raise InvalidNameError(f"invalid domain {domain!r}: that container is used by the pipeline itself")
    validate_version(version)
    if not file.strip():
        raise InvalidNameError(f"{name!r} has an empty file name")
    return StagedName(name=name, set=SetRef(domain=domain, dirs=tuple(dirs), version=version), file=file)
