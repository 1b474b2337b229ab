"""What each CLI command does to storage, and so which data roles the person running it needs.

This table is the source of the operators' and admins' role assignments in
``infra/modules/storage-rbac.bicep``: ``python -m corpus.deploycheck`` (and ``tests/test_infra.py``)
derive every role a command needs from it and fail if the Bicep does not grant it. When a command
starts touching a new container, queue or table, add it here; the check then says which role is
missing. The entries were read from the code paths of each command (``corpus/cli``, ``corpus/app``,
``corpus/pull``, ``corpus/dataset.py``).

Two tiers of principals:

* **operators** (the deployer and an optional group of people and upload tools): upload to
  staging, send requests, read everything, register models;
* **admins** (the deployer only): :data:`ADMIN_COMMANDS`, which write the catalog directly
  (``reindex``, ``migrate``) or run the ingest the blob trigger runs, re-driving copies through the internal
  ``copy-requests`` queue (``reconcile``).

``corpus host`` is not listed: it is a development host run with a connection string (Azurite).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corpus.store import settings as s

ANY = "*"
"""Every container / queue / table of the account, including the per-domain containers the app
creates at run time (so the role must be account-wide)."""

Service = Literal["blob", "queue", "table"]
Action = Literal["read", "write", "send"]


@dataclass(frozen=True, slots=True)
class Access:
    """One kind of storage operation on one target (a container, queue or table name, or ANY)."""

    service: Service
    action: Action
    target: str = ANY


def _d(name: str) -> str:
    return s.DEFAULTS[name]


STAGING, REJECTED, DEADLETTER = _d(s.STAGING_CONTAINER), _d(s.REJECTED_CONTAINER), _d(s.DEADLETTER_CONTAINER)
TRAINSETS = _d(s.TRAINSETS_CONTAINER)
CATALOG = _d(s.CATALOG_CONTAINER)
READ_TABLES = Access("table", "read")

COMMANDS: dict[str, tuple[Access, ...]] = {
    # upload/sample: list staging (resume), Put Blob, read back properties; the catalog check reads tables.
    "upload": (Access("blob", "read", STAGING), Access("blob", "write", STAGING), READ_TABLES),
    "sample": (Access("blob", "write", STAGING), READ_TABLES),
    # status: queue depths (with poison), the staging listing, rejections, failures, sets, dead letters.
    "status": (Access("queue", "read"), Access("blob", "read", STAGING), Access("blob", "read", DEADLETTER), READ_TABLES),
    "sets": (READ_TABLES,),
    "count": (READ_TABLES,),
    "lineage": (READ_TABLES,),
    "transform": (READ_TABLES, Access("queue", "send", _d(s.TRANSFORM_QUEUE))),
    "trainset create": (READ_TABLES, Access("queue", "send", _d(s.TRAINSET_QUEUE))),
    # resume: a continuation for a build left 'building' (issue 25 B5), on the same queue as create.
    "trainset resume": (READ_TABLES, Access("queue", "send", _d(s.TRAINSET_QUEUE))),
    "trainset list": (READ_TABLES,),
    "trainset show": (READ_TABLES,),
    # manifest: the manifest blob; verify: every listed blob's properties, in the domain containers.
    "trainset manifest": (READ_TABLES, Access("blob", "read", TRAINSETS)),
    "trainset verify": (READ_TABLES, Access("blob", "read", TRAINSETS), Access("blob", "read")),
    "model register": (READ_TABLES, Access("table", "write", s.TABLE_MODELS), Access("table", "write", s.TABLE_LINEAGE)),
    "model list": (READ_TABLES,),
    "model show": (READ_TABLES,),
    # pull and corpus.dataset.TrainsetDataset: the manifest, then the images from the domain containers.
    "pull": (READ_TABLES, Access("blob", "read", TRAINSETS), Access("blob", "read")),
    "TrainsetDataset": (READ_TABLES, Access("blob", "read", TRAINSETS), Access("blob", "read")),
    "export": (READ_TABLES, Access("queue", "send", _d(s.EXPORT_QUEUE))),
    "gallery": (),
    # dupes: the Duplicates table's member rows (and sets' tags); --trainset also streams the manifest.
    "dupes": (READ_TABLES, Access("blob", "read", TRAINSETS)),
    "diff": (READ_TABLES,),
    # query: the catalog's manifest and Parquet files, and the tables' rows written after its watermark.
    "query": (READ_TABLES, Access("blob", "read", CATALOG), Access("blob", "read", TRAINSETS)),
    # admins
    # reindex --facts also reads every image (domain containers) and writes Images and Duplicates.
    "reindex": (
        READ_TABLES,
        Access("table", "write", s.TABLE_SETS),
        Access("table", "write", s.TABLE_IMAGES),
        Access("table", "write", s.TABLE_DUPES),
        Access("blob", "read"),
    ),
    # schema migrations (docs/schema.md): source-markers writes markers and Schema stamps into Images.
    "migrate": (READ_TABLES, Access("table", "write", s.TABLE_IMAGES)),
    # catalog sync (the timer function's job, by hand): reads the tables and manifests, writes the catalog.
    "catalog sync": (READ_TABLES, Access("blob", "read", TRAINSETS), Access("blob", "write", CATALOG)),
    # reconcile runs the blob trigger's ingest: reads staging and the dead letters, moves rejects to
    # rejected (copy, delete staged), records validations/redrives/rejections, queues copies.
    "reconcile": (
        Access("blob", "read", STAGING),
        Access("blob", "write", STAGING),
        Access("blob", "read", DEADLETTER),
        Access("blob", "write", REJECTED),
        READ_TABLES,
        Access("table", "write"),
        Access("queue", "send", _d(s.COPY_QUEUE)),
        Access("queue", "send", _d(s.TRAINSET_QUEUE)),  # resumes stuck training-set builds (issue 25 B5)
    ),
}

ADMIN_COMMANDS = frozenset({"reindex", "migrate", "reconcile", "catalog sync"})

# The least built-in role for each kind of access (role names as in the Bicep's variables).
ROLE_FOR: dict[tuple[Service, Action], str] = {
    ("blob", "read"): "storageBlobDataReader",
    ("blob", "write"): "storageBlobDataContributor",
    ("queue", "read"): "storageQueueDataReader",
    ("queue", "send"): "storageQueueDataMessageSender",
    ("table", "read"): "storageTableDataReader",
    ("table", "write"): "storageTableDataContributor",
}

# Roles that include another's data actions.
INCLUDES: dict[str, frozenset[str]] = {
    "storageBlobDataOwner": frozenset({"storageBlobDataContributor", "storageBlobDataReader"}),
    "storageBlobDataContributor": frozenset({"storageBlobDataReader"}),
    "storageQueueDataContributor": frozenset({"storageQueueDataReader", "storageQueueDataMessageSender"}),
    "storageTableDataContributor": frozenset({"storageTableDataReader"}),
}


@dataclass(frozen=True, slots=True)
class Grant:
    """A role at a scope: ANY (the account) or one container, queue or table."""

    role: str
    scope: str = ANY

    def covers(self, need: Grant) -> bool:
        role_ok = self.role == need.role or need.role in INCLUDES.get(self.role, frozenset())
        return role_ok and self.scope in (ANY, need.scope)


def needed(tier: Literal["operators", "admins"]) -> dict[Grant, list[str]]:
    """Every grant the commands of ``tier`` need, with the commands that need it."""
    out: dict[Grant, list[str]] = {}
    for command, accesses in COMMANDS.items():
        if (command in ADMIN_COMMANDS) != (tier == "admins"):
            continue
        for a in accesses:
            out.setdefault(Grant(ROLE_FOR[(a.service, a.action)], a.target), []).append(command)
    return out


def missing(tier: Literal["operators", "admins"], granted: set[Grant]) -> list[str]:
    """One line per needed grant that no granted role covers, naming the commands that need it."""
    return [
        f"{tier} need {g.role} on {'the account' if g.scope == ANY else repr(g.scope)} for: {', '.join(cmds)}"
        for g, cmds in sorted(needed(tier).items(), key=lambda kv: (kv[0].role, kv[0].scope))
        if not any(have.covers(g) for have in granted)
    ]
