"""One exception tree for the whole package.

Callers branch on these classes, never on message text:

* :class:`PermanentError`: the input will fail the same way on every retry. The failure reporter
  (:mod:`corpus.app.failures`) catches it, and only it, by name: the message goes to its poison
  queue at once with this reason, instead of being retried ``maxDequeueCount`` times.
* :class:`ConfigError`: a setting, ``host.json`` or the tag extractor is wrong. Raised at start-up,
  so a bad deployment fails once with one clear line rather than once per blob.
* Everything else under :class:`CorpusError` is transient or a verdict on content (an
  :class:`ImageError` fails only its own job, which the host retries and then poisons).

Several classes also derive from :class:`ValueError`: they were ``ValueError`` s before this tree
existed, and callers that catch ``ValueError`` keep working.
"""

from __future__ import annotations


class CorpusError(Exception):
    """Base of every error this package raises on purpose."""


class PermanentError(CorpusError):
    """An input that will fail the same way on every retry: poisoned at once, with its reason."""


class InvalidNameError(PermanentError, ValueError):
    """A blob name, domain, version or path that does not fit the naming contract."""


class MessageError(PermanentError, ValueError):
    """A queue message that can never succeed (malformed, wrong schema, names nothing valid)."""


class TransformError(PermanentError, ValueError):
    """An unknown transform or invalid transform arguments."""


class TransformConflictError(PermanentError):
    """A transform (name, version) already registered with different arguments."""


class NotFoundError(PermanentError):
    """What a request names (a set, a source image) does not exist."""


class ConfigError(CorpusError, ValueError):
    """A setting, ``host.json`` or the tag extractor is missing or malformed."""


class ImageError(CorpusError, ValueError):
    """Content that is not an acceptable image; the message is shown to the user as the reason."""


class ConflictError(CorpusError):
    """The same image name is already recorded with different content."""


class CopyFailed(CorpusError):
    """A copy that did not verify; retried by the queue, then poisoned with this reason."""


class StorageError(CorpusError):
    """A storage request that failed for good (status and service error code when known)."""

    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BlobNotFound(StorageError):
    """The blob (or its container) does not exist: HTTP 404 from either implementation."""


class PreconditionFailed(StorageError):
    """A conditional request's condition did not hold (If-Match, If-None-Match, a source ETag).

    The store ports name their conditions in their verbs (``put_once``, ``delete_if_unchanged``…);
    this is what those verbs raise when the condition is the reason the request did nothing.
    """


class BlobExists(PreconditionFailed):
    """``If-None-Match: *`` refused: the name is taken (Azure 409 ``BlobAlreadyExists`` or 412)."""


class SourceChanged(PreconditionFailed):
    """A copy's source is no longer at the required ETag, or is gone.

    Azure answers 412 ``SourceConditionNotMet`` (or 404), Azurite 412 ``ConditionNotMet``: the
    adapter tells them apart from a taken destination by looking at the destination.
    """


class BlobConflict(ConflictError):
    """``put_once`` found the name taken by other bytes (another MD5): write-once, not overwritten."""

    def __init__(self, message: str, stored_md5: str, stored_size: int) -> None:
        super().__init__(message)
        self.stored_md5 = stored_md5
        self.stored_size = stored_size


class MessageTooLarge(PermanentError, ValueError):
    """A queue message above Azure's 64 KiB, counted after the host's ``messageEncoding``."""


MAX_REASON = 16_000
"""Characters of a reason or message body kept in a table row (a string property holds 32 K
UTF-16 code units; this leaves room for the other properties of the row)."""


def truncate(text: str, limit: int = MAX_REASON) -> str:
    """The one place reasons and bodies are cut to fit a table property, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def reason(exc: BaseException) -> str:
    """``TypeName: message``, as failures are shown in ``corpus status``."""
    return f"{type(exc).__name__}: {exc}"
