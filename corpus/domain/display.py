"""Text that leaves the program (terminal, JSON, logs, table rows): secrets redacted, names escaped.

Two rules, each in one place:

* :func:`redact`: a SAS signature (``sig=…``) or an account key (``AccountKey=…``) is a credential.
  SDK errors quote the request URL, so anything that may carry one (CLI errors, ``upload --json``,
  the failures file, the ``Failures`` table, log records) passes through here.
* :func:`printable`: names are hostile: a staged blob called ``a\\nFORGED: …`` must not print a
  line of its own in ``corpus status``. Control, format and line/paragraph separator characters and
  lone surrogates (undecodable file names) are shown as Python-style escapes.
"""

from __future__ import annotations

import logging
import re
import unicodedata

REDACTED = "REDACTED"
_SECRETS = re.compile(r"(?i)(\bsig=|\bAccountKey=)[^&;\s\"'<>]+")
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def redact(text: str) -> str:
    """``text`` with every SAS signature and account key replaced by ``REDACTED``."""
    return _SECRETS.sub(lambda m: m.group(1) + REDACTED, text)


def printable(text: str) -> str:
    """``text`` with every character that could move the cursor or hide text escaped."""
    if all(unicodedata.category(ch) not in _UNPRINTABLE for ch in text):
        return text
    out: list[str] = []
    for ch in text:
        if unicodedata.category(ch) in _UNPRINTABLE:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii") if ch.isascii() else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def valid_text(text: str) -> str:
    """``text`` as valid Unicode: lone surrogates (bytes of an undecodable file name) become
    ``\\udcXX`` escapes, so JSON output stays UTF-8 whatever the file system held."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(text: object) -> str:
    """What the CLI prints for a value: redacted and escaped."""
    return printable(redact(str(text)))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials from every record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def md5_shown(md5_hex: str) -> str:
    """An MD5 as a person reads it everywhere: base64, Azure's ``Content-MD5`` spelling (see
    docs/architecture.md, "Checksums"). Code keeps hex where it stores it; anything that is not a
    16-byte hex digest (``""``, ``"unknown"``) is shown as it is."""
    import base64
    import binascii

    try:
        raw = bytes.fromhex(md5_hex)
    except (ValueError, binascii.Error):
        return md5_hex
    return base64.b64encode(raw).decode("ascii") if len(raw) == 16 else md5_hex
