"""What an upload reports: the summary, its failures file, the progress line and the final lines."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from corpus.domain.display import redact, shown, valid_text
from corpus.transfer.pacing import write_status
from corpus.upload.plan import Skip


@dataclass
class Failure:
    path: str
    staged: str
    reason: str
    kind: str = "failed"  # or "conflict"


@dataclass
class Summary:
    domain: str
    version: str
    source: str
    uploaded: int = 0
    bytes_uploaded: int = 0
    already_staged: int = 0
    already_ingested: int = 0
    would_upload: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Skip})
    failures: list[Failure] = field(default_factory=list)
    would_upload_files: list[str] = field(default_factory=list)  # staged names, --dry-run only
    seen_files: int = 0
    seen_bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def conflicts(self) -> int:
        return sum(1 for f in self.failures if f.kind == "conflict")

    @property
    def failed(self) -> int:
        return sum(1 for f in self.failures if f.kind == "failed")

    def as_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain, "version": self.version, "source": self.source,
            "uploaded": self.uploaded, "bytes_uploaded": self.bytes_uploaded,
            "already_staged": self.already_staged, "already_ingested": self.already_ingested,
            "would_upload": self.would_upload, "skipped": self.skipped, "conflicts": self.conflicts,
            "failed": self.failed, "seconds": round(self.seconds, 3),
            "files_per_s": round(self.seen_files / self.seconds, 1) if self.seconds else None,
            "interrupted": self.interrupted,
            "failures": [
                {**f.__dict__, "path": valid_text(f.path), "staged": valid_text(f.staged), "reason": valid_text(redact(f.reason))}
                for f in self.failures
            ],
            **({"would_upload_files": self._sorted_names()} if self.would_upload_files else {}),
        }  # fmt: skip

    def _sorted_names(self) -> list[str]:
        """The dry run's names, sorted in place: at 100,000 files a sorted copy (and the copies
        ``valid_text`` used to make here) cost ~15 MB of peak memory (issue 26); the runner stores
        each name already made printable."""
        self.would_upload_files.sort()
        return self.would_upload_files


class HasSummary(Protocol):
    @property
    def summary(self) -> Summary: ...


class Progress:
    """A one-line progress bar on a terminal; a log line every few seconds otherwise."""

    def __init__(self, stream: TextIO, summary_ref: HasSummary | None = None, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval or (0.2 if self.tty else 5.0)
        self.done_files = 0
        self.done_bytes = 0
        self.uploader = summary_ref
        self._lock = threading.Lock()
        self._last = 0.0
        self._start = time.monotonic()

    def tick(self, nbytes: int, dry_run_name: str | None) -> None:
        with self._lock:
            self.done_files += 1
            self.done_bytes += nbytes
            if dry_run_name:
                print(f"would upload {shown(dry_run_name)}", file=self.stream)
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self.render(final=False)

    def render(self, final: bool) -> None:
        s = self.uploader.summary if self.uploader else None
        total_files = s.seen_files if s else 0
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = self.done_bytes / elapsed
        files_rate = self.done_files / elapsed
        remaining = max(total_files - self.done_files, 0)
        eta = f"{remaining / files_rate:,.0f}s" if files_rate and not final else "-"
        line = (f"{self.done_files:,}/{total_files:,}+ files  {self.done_bytes / 1e6:,.1f} MB  "
                f"{rate * 8 / 1e6:,.1f} Mbit/s  {files_rate:,.0f} files/s  ETA {eta}")  # fmt: skip
        write_status(self.stream, self.tty, line, final)


def load_retry_file(path: Path) -> dict[str, Any]:
    """A failures file, checked field by field: anything else raises ``ValueError`` with one line."""
    not_ours = f"{path} is not a failures file written by corpus upload --failures"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{not_ours} (not UTF-8 text)") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{not_ours} (not JSON: {exc})") from exc
    if not isinstance(data, dict) or not {"source", "domain", "version", "failures"} <= set(data):
        raise ValueError(not_ours)
    if not all(isinstance(data[k], str) for k in ("source", "domain", "version")) or not isinstance(data["failures"], list):
        raise ValueError(f"{not_ours} (source, domain and version must be text, failures a list)")
    if not all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in data["failures"]):
        raise ValueError(f"{not_ours} (every failure needs a 'path')")
    return data


def retry_paths(data: dict[str, Any]) -> list[str]:
    """Relative paths of the files a failures file lists (directories that failed are re-walked)."""
    root = Path(data["source"])
    out = []
    for failure in data["failures"]:
        path = Path(failure["path"])
        try:
            out.append(path.relative_to(root).as_posix())
        except ValueError:
            continue
    return out


def write_failures(path: Path, summary: Summary) -> None:
    body = summary.as_json()
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False), encoding="utf-8")


FAILURES_SHOWN = 5
"""Failures printed by the summary; ``--failures FILE`` holds every one."""


def human_summary(s: Summary, stream: TextIO = sys.stderr, shown_failures: int = FAILURES_SHOWN) -> None:
    skipped = ", ".join(f"{n} {k}" for k, n in s.skipped.items() if n) or "none"
    verb = f"would upload {s.would_upload}" if s.would_upload else f"uploaded {s.uploaded} ({s.bytes_uploaded / 1e6:,.1f} MB)"
    print(f"{verb}; already staged {s.already_staged}; already ingested {s.already_ingested}; "
          f"skipped: {skipped}; conflicts {s.conflicts}; failed {s.failed}; {s.seconds:.1f}s", file=stream)  # fmt: skip
    for f in s.failures[:shown_failures]:
        print(f"  {f.kind}: {shown(f.path)}: {shown(f.reason)}", file=stream)
    if len(s.failures) > shown_failures:
        print(f"  … and {len(s.failures) - shown_failures} more (--failures FILE lists every one)", file=stream)
    if s.interrupted:
        print("interrupted: run the same command again to send the rest", file=stream)
