"""The layers exist in the code, not only in the README: imports may only point downwards.

domain (pure) ← store (SDK adapters) ← app (use cases) ← function_app / cli / devhost.
The domain knows nothing of Azure; nothing but the entry points knows the app layer's wiring.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "domain": ("azure", "corpus.store", "corpus.app", "corpus.upload", "corpus.devhost", "corpus.cli", "requests"),
    "store": ("corpus.app", "corpus.upload", "corpus.pull", "corpus.transfer", "corpus.devhost", "corpus.cli", "azure.functions"),
    # The ports and the in-memory store are the seam: the use cases and their unit tests run on them
    # without the Azure SDK.
    "store/ports.py": ("azure",),
    "store/memory.py": ("azure",),
    # HTTP/1.1 for the SDKs' transport and for upload/pull, whose start-up must not load an SDK.
    "store/wire.py": ("azure", "requests", "urllib3", "http.client", "corpus"),
    # Use cases reach storage only through the ports (corpus.store.ports) and the table stores.
    "app": ("azure", "corpus.upload", "corpus.pull", "corpus.transfer", "corpus.devhost", "corpus.cli"),
    "upload": ("corpus.app", "corpus.pull", "corpus.devhost", "corpus.cli", "azure.functions", "PIL"),
    "pull": ("corpus.app", "corpus.upload", "corpus.devhost", "corpus.cli", "azure.functions", "PIL"),
    # What upload and pull share (listings, the hash cache, pacing and progress lines); the
    # devhost lists its blob-trigger containers with the same lean listing.
    "transfer": ("azure.functions", "corpus.app", "corpus.upload", "corpus.pull", "corpus.devhost", "corpus.cli", "PIL"),
    "cli": ("azure.functions", "function_app"),
    "devhost": ("corpus.cli", "corpus.upload", "corpus.pull"),
    "dataset.py": ("azure", "corpus.app", "corpus.cli", "corpus.devhost", "corpus.upload"),
    "lineage.py": ("azure", "corpus.cli", "corpus.devhost", "corpus.upload", "corpus.pull"),
    # The catalog (issue 21): a capability over the store; storage only in corpus/catalog/storage.py (below).
    "catalog": (
        "corpus.app",
        "corpus.upload",
        "corpus.pull",
        "corpus.transfer",
        "corpus.devhost",
        "corpus.cli",
        "azure.functions",
    ),
}

CATALOG_STORAGE = ("azure", "corpus.store.storage", "corpus.store.settings", "corpus.store.catalog")
"""Only the catalog's adapter (corpus/catalog/storage.py) touches storage: moving it onto other ports is one file."""


def test_the_catalog_touches_storage_in_one_module_only() -> None:
    bad = [
        f"{path.name} imports {name}"
        for path in sorted((CORPUS / "catalog").glob("*.py"))
        if path.name != "storage.py"
        for name in sorted(imports_of(path))
        if any(name == banned or name.startswith(banned + ".") for banned in CATALOG_STORAGE)
    ]
    assert bad == []


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_point_downwards(layer: str) -> None:
    files = [CORPUS / layer] if layer.endswith(".py") else sorted((CORPUS / layer).rglob("*.py"))
    assert files and files[0].exists(), f"corpus/{layer} is missing or empty"
    bad = [
        f"{path.relative_to(CORPUS.parent)} imports {name}"
        for path in files
        for name in sorted(imports_of(path))
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[layer])
    ]
    assert bad == []


def test_every_sub_package_has_an_empty_init() -> None:
    for init in CORPUS.glob("*/__init__.py"):
        assert init.read_text() == "", f"{init} is not empty"


def test_the_documented_tag_extractor_default_still_resolves() -> None:
    from corpus.domain.tags import DEFAULT_EXTRACTOR, load_extractor

    assert DEFAULT_EXTRACTOR == "corpus.tags:path_components"
    assert list(load_extractor(DEFAULT_EXTRACTOR)(["a", "b"])) == ["a", "b"]
