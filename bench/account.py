"""Where a bench's storage lives: its own private Azurite (the default), or an external account.

The benches that compare corpus with a peer (``upload_bench``, ``dataout_bench``, ``ingest_bench``)
take ``--storage-connection-string-env VAR``: the connection string is read from the environment
variable ``VAR``, never from the command line (where ``ps`` and shell history would keep the key).

* Without it, a bench starts its private in-memory Azurite exactly as before, and every container,
  queue and table keeps the name it always had (:class:`Names` with no prefix is the identity).
* With it, every container and queue the run makes is named ``<prefix>-<role>`` and every table
  ``<prefix><role>`` from one per-run prefix (:func:`run_prefix`: ``bn`` + UTC month, day and time +
  4 random hex digits, valid for all three services), and :meth:`Storage.close` deletes them, also
  when the run fails (``finally``; SIGTERM is turned into an exit so that it runs then too).

corpus's own tables (``corpus.store.settings.TABLES``) and the stand-in host's receipts table and
trigger queues have fixed names: the Functions bindings cannot take a table name from a setting.
A bench that writes them *claims* them (:meth:`Storage.claim`): it refuses to start when any of
them exists (the account is not one dedicated to benches, or an earlier run was killed before its
clean-up), creates them itself (waiting out Azure's ``TableBeingDeleted``/``QueueBeingDeleted``
after a previous run's deletion) and deletes them at the end. Two such benches cannot share an
account at the same time.

Nothing here prints a key or a SAS: :func:`redact_output` puts stdout and stderr (tracebacks
included) through :func:`redact`, which masks the account key, ``AccountKey=`` and every SAS
signature (``sig=``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from corpus.domain.paths import CONTAINER_NAME_RE  # noqa: E402  (Azure's container and queue names)

OPTION = "--storage-connection-string-env"
SAS_VERSION = "2025-11-05"  # the newest Azurite 3.35 accepts; Azure accepts it as well
REDACTED = "REDACTED"

_TABLE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
PREFIX_PATTERN = re.compile(r"^bn\d{10}[0-9a-f]{4}$")
"""What :func:`run_prefix` makes: 16 characters, lowercase, a letter first; room for roles of up
to 46 characters (``<prefix>-<role>`` within 63)."""


def add_storage_option(ap: argparse.ArgumentParser) -> None:
    """The option every peer bench takes, with the same name and meaning."""
    ap.add_argument(
        OPTION,
        metavar="VAR",
        dest="storage_connection_string_env",
        help="run against the storage account whose connection string is in environment variable VAR "
        "(never on the command line) instead of a private Azurite; every resource gets a per-run prefix "
        "and is deleted at the end (see docs/benchmarks.md)",
    )


def connection_string_from(var: str, env: Mapping[str, str]) -> str:
    """The connection string in ``env[var]``, or SystemExit with a message naming the variable (not its value)."""
    value = env.get(var, "").strip()
    if not value:
        raise SystemExit(f"{OPTION} {var}: the environment variable {var} is unset or empty")
    pairs = {k.strip().lower(): v for k, _, v in (p.partition("=") for p in value.split(";") if p.strip())}
    if not pairs.get("accountkey"):
        raise SystemExit(
            f"{OPTION} {var}: the connection string has no AccountKey; the peers (AzCopy, rclone, "
            "azstoragetorch) are given a container SAS signed with it"
        )
    if "usedevelopmentstorage" in pairs:
        raise SystemExit(f"{OPTION} {var}: UseDevelopmentStorage is Azurite on its default ports; leave the option out")
    return value


def run_prefix(now: datetime | None = None, token: str | None = None) -> str:
    """A prefix unique to one run, valid at the head of any container, queue or table name."""
    now = now or datetime.now(UTC)
    prefix = f"bn{now:%m%d%H%M%S}{token if token is not None else secrets.token_hex(2)}"
    if not PREFIX_PATTERN.match(prefix):
        raise ValueError(f"not a run prefix: {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class Names:
    """A run's resource names: ``<prefix>-<role>`` (containers, queues, domains), ``<prefix><role>``
    (tables); with no prefix (the private Azurite) every role is its own name, as before."""

    prefix: str = ""

    def container(self, role: str) -> str:
        return _checked(f"{self.prefix}-{role}" if self.prefix else role, CONTAINER_NAME_RE, "container")

    def queue(self, role: str) -> str:
        return _checked(f"{self.prefix}-{role}" if self.prefix else role, CONTAINER_NAME_RE, "queue")

    def domain(self, role: str) -> str:
        """A corpus domain, whose container bears its name."""
        return self.container(role)

    def table(self, role: str) -> str:
        return _checked(f"{self.prefix}{role}" if self.prefix else role, _TABLE, "table")

    def owns(self, name: str) -> bool:
        """Whether ``name`` is one of this run's (never true without a prefix: nothing is deleted by name then)."""
        return bool(self.prefix) and name.lower().startswith(self.prefix)


def _checked(name: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(name):
        raise ValueError(f"{name!r} is not a valid Azure {what} name")
    return name


# -- corpus's settings that name a container or a queue (corpus.store.settings) ---------------------------------------

CONTAINER_SETTINGS = (
    "CORPUS_STAGING_CONTAINER",
    "CORPUS_REJECTED_CONTAINER",
    "CORPUS_DEADLETTER_CONTAINER",
    "CORPUS_TRAINSETS_CONTAINER",
    "CORPUS_EXPORTS_CONTAINER",
    "CORPUS_CATALOG_CONTAINER",
)
QUEUE_SETTINGS = (
    "CORPUS_COPY_QUEUE",
    "CORPUS_TRANSFORM_QUEUE",
    "CORPUS_TRANSFORM_JOBS_QUEUE",
    "CORPUS_EXPORT_QUEUE",
    "CORPUS_TRAINSET_QUEUE",
)


def corpus_settings(names: Names) -> dict[str, str]:
    """App settings that move corpus's containers and queues under the run's prefix (none without one)."""
    from corpus.store.settings import DEFAULTS

    if not names.prefix:
        return {}
    return {
        **{k: names.container(DEFAULTS[k]) for k in CONTAINER_SETTINGS},
        **{k: names.queue(DEFAULTS[k]) for k in QUEUE_SETTINGS},
    }


# -- redaction --------------------------------------------------------------------------------------------------------

_PATTERNS = (
    (re.compile(r"(?i)(AccountKey=)[^;\s\"'&]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(SharedAccessSignature=)[^;\s\"']+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\bsig=)[^&\s\"';]+"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(\bsig%3D)[^&\s\"';]+"), rf"\1{REDACTED}"),
)
_secrets: set[str] = set()


def keep_secret(value: str) -> None:
    """Mask ``value`` (and its URL-encoded form) in everything :func:`redact` sees from now on."""
    if len(value) >= 8:
        _secrets.update({value, quote(value, safe=""), quote(value)})


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every known secret, ``AccountKey=…`` value and SAS signature masked."""
    for value in sorted({*_secrets, *(e for e in extra if len(e) >= 8)}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class _Redacting(io.TextIOBase):
    def __init__(self, inner: TextIO) -> None:
        self.inner = inner

    def write(self, s: str) -> int:
        self.inner.write(redact(s))
        return len(s)

    def flush(self) -> None:
        self.inner.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.inner.encoding

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return self.inner.isatty()


def redact_output() -> None:
    """Route this process's stdout and stderr (prints, logging set up later, tracebacks) through
    :func:`redact`, and make SIGTERM an exit so that ``finally`` clean-ups run."""
    if not isinstance(sys.stdout, _Redacting):
        sys.stdout = _Redacting(sys.stdout)
    if not isinstance(sys.stderr, _Redacting):
        sys.stderr = _Redacting(sys.stderr)

    def exit_on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_term)


# -- one run's storage ------------------------------------------------------------------------------------------------


@dataclass
class Storage:
    """What a bench run connects to: the connection string (for corpus and the SDK), the account
    name and key (to sign the peers' SAS), its blob endpoint, the run's :class:`Names`, and how to
    report and release it."""

    connection_string: str
    names: Names
    external: bool
    on_close: Callable[[], None] = lambda: None
    service_ids: dict[str, str] = field(default_factory=dict)
    """blob/queue/table → what tells a request's URL apart: Azurite's port, else the host name."""
    azurite: Any = None
    """The private :class:`tests.support.Azurite` (its process, for benches that measure its CPU), or None."""
    _claimed: dict[str, set[str]] = field(default_factory=lambda: {"table": set(), "queue": set()})
    _clients: Any = None

    def __post_init__(self) -> None:
        from azure.storage.blob import BlobServiceClient

        svc = BlobServiceClient.from_connection_string(self.connection_string)
        self.account: str = str(svc.account_name)
        self.key: str = str(svc.credential.account_key)
        self.blob_url: str = svc.url.rstrip("/")
        keep_secret(self.key)
        keep_secret(self.connection_string)

    @property
    def server(self) -> dict[str, str]:
        """What the figures were measured against, for every bench's output."""
        host = urlsplit(self.blob_url).netloc
        if not self.external:
            return {"kind": "private Azurite (in memory, this machine)", "blob_endpoint": host, "version": _azurite_version()}
        return {"kind": "external storage account", "account": self.account, "blob_endpoint": host, "prefix": self.names.prefix}

    @property
    def clients(self) -> Any:
        """corpus's :class:`~corpus.store.storage.Clients` for this storage (built once)."""
        if self._clients is None:
            from corpus.store.settings import Connection
            from corpus.store.storage import Clients

            self._clients = Clients(Connection(connection_string=self.connection_string))
        return self._clients

    def container_sas(self, container: str, permission: str, hours: int = 6) -> str:
        """A container SAS for the peers (AzCopy, rclone, azstoragetorch), signed with the account key."""
        from azure.storage.blob._shared_access_signature import BlobSharedAccessSignature

        signer = BlobSharedAccessSignature(self.account, self.key)
        signer.x_ms_version = SAS_VERSION  # the SDK would sign with a version Azurite refuses
        sas = str(signer.generate_container(container, permission=permission, expiry=datetime.now(UTC) + timedelta(hours=hours)))
        keep_secret(sas)
        return sas

    def env(self) -> dict[str, str]:
        """The app settings corpus (CLI, host, library) needs to use this storage under the run's names."""
        return {
            "CorpusStorage": self.connection_string,
            "AzureWebJobsStorage": self.connection_string,
            **corpus_settings(self.names),
        }

    def claim(self, tables: Iterable[str] = (), queues: Iterable[str] = (), wait_s: float = 300.0) -> None:
        """Fixed-name tables and queues this run writes (external accounts only): refused if any
        exists, created here (retrying while Azure still deletes a previous run's), deleted by :meth:`close`."""
        if not self.external:
            return
        tables, queues = sorted(set(tables)), sorted(set(queues))
        clients = self.clients
        existing_tables = {t.name.lower() for t in clients.table.list_tables()}
        existing_queues = {q.name for q in clients.queue.list_queues()}
        found = [f"table {t}" for t in tables if t.lower() in existing_tables]
        found += [f"queue {q}" for q in queues if q in existing_queues]
        if found:
            raise SystemExit(
                f"{self.account} already has {', '.join(found)}. corpus names these itself, so this bench "
                "needs an account that holds no corpus deployment and no other bench run; if they are left "
                "from a bench run that was killed, delete them and run again"
            )
        for name in tables:  # claimed once created: one made by someone else in between is not ours to delete
            _create_waiting(partial(clients.table.create_table, name), "TableBeingDeleted", wait_s)
            self._claimed["table"].add(name)
        for name in queues:
            _create_waiting(clients.queue_client(name).create_queue, "QueueBeingDeleted", wait_s)
            self._claimed["queue"].add(name)

    def close(self) -> None:
        """Stop the private Azurite, or delete everything of this run from the external account
        (prefixed containers, queues and tables, and the claimed fixed-name ones); reports what was
        deleted and anything left on stderr."""
        try:
            if self.external:
                deleted = delete_run_resources(self.clients, self.names, self._claimed)
                left = run_resources(self.clients, self.names, self._claimed)
                summary = {k: len(v) for k, v in deleted.items()}
                print(json.dumps({"storage_cleanup": {"prefix": self.names.prefix, "deleted": summary, "left": left}}),
                      file=sys.stderr, flush=True)  # fmt: skip
        finally:
            self.on_close()


def _create_waiting(create: Callable[[], Any], being_deleted: str, wait_s: float) -> None:
    """``create()``, again every few seconds while Azure answers ``being_deleted`` (409 for ~30-60 s
    after a delete of the same name), for at most ``wait_s``."""
    from azure.core.exceptions import ResourceExistsError

    from corpus.store.storage import error_code

    deadline = time.monotonic() + wait_s
    while True:
        try:
            create()
            return
        except ResourceExistsError as exc:
            if error_code(exc) != being_deleted or time.monotonic() > deadline:
                raise
        time.sleep(5)  # Azure's own deletion, not our code: there is no condition to wait on


def run_resources(clients: Any, names: Names, claimed: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """This run's containers, queues and tables that exist now (the prefixed ones and the claimed ones)."""
    claimed_tables = {t.lower() for t in claimed.get("table", ())}
    return {
        "containers": sorted(c.name for c in clients.blob.list_containers(name_starts_with=names.prefix) if names.owns(c.name)),
        "queues": sorted(q.name for q in clients.queue.list_queues() if names.owns(q.name) or q.name in claimed.get("queue", ())),
        "tables": sorted(t.name for t in clients.table.list_tables() if names.owns(t.name) or t.name.lower() in claimed_tables),
    }


def delete_run_resources(clients: Any, names: Names, claimed: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """Delete this run's resources (:func:`run_resources`); each failure is printed and the rest still go."""
    found = run_resources(clients, names, claimed)
    deleters = {
        "containers": lambda n: clients.container(n).delete_container(),
        "queues": lambda n: clients.queue_client(n).delete_queue(),
        "tables": lambda n: clients.table.delete_table(n),
    }
    deleted: dict[str, list[str]] = {k: [] for k in found}
    for kind, items in found.items():
        for name in items:
            try:
                deleters[kind](name)
                deleted[kind].append(name)
            except Exception as exc:  # the others are still deleted; this one is reported as left
                print(f"storage clean-up: could not delete {kind[:-1]} {name}: {type(exc).__name__}", file=sys.stderr)
    return deleted


def _azurite_version() -> str:
    try:
        return str(json.loads((REPO / "node_modules" / "azurite" / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def open_storage(var: str | None, tmp: Path, env: Mapping[str, str] | None = None) -> Storage:
    """The storage for one run: the external account named by ``var`` (a fresh prefix each call),
    or, without ``var``, a private Azurite started in ``tmp``."""
    if var:
        conn = connection_string_from(var, os.environ if env is None else env)
        storage = Storage(conn, Names(run_prefix()), external=True)
        storage.service_ids = _service_hosts(conn)
        redact_output()
        return storage
    from tests.support import Azurite

    az = Azurite(tmp).start()
    return Storage(az.connection_string, Names(), external=False, on_close=az.stop,
                   service_ids={k: str(v) for k, v in az.ports.items()}, azurite=az)  # fmt: skip


def _service_hosts(conn: str) -> dict[str, str]:
    from azure.data.tables import TableServiceClient
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    urls = {
        "blob": BlobServiceClient.from_connection_string(conn).url,
        "queue": QueueServiceClient.from_connection_string(conn).url,
        "table": TableServiceClient.from_connection_string(conn).url,
    }
    # as ingest_bench's request counter reads a URL: the port when there is one, else the host
    return {k: urlsplit(u).netloc.rsplit(":", 1)[-1] for k, u in urls.items()}
