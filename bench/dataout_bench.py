"""Getting a training set out: ``corpus pull`` vs AzCopy vs rclone, and DataLoader samples/s.

One Azurite, one training set of 2,000 JPEGs of about 80 KB (5 labels, train/val/test by MD5),
stored in domain container ``bench`` with their Content-MD5, and its manifest.

* **Pull**: each tool downloads the 2,000 blobs to its own empty folder, then runs again with
  nothing to do, ``--reruns`` times round-robin (median). Wall time of the whole command.
  ``corpus pull bench-set:1 DEST --layout corpus`` (MD5 of every file checked against the
  manifest); ``azcopy copy <container SAS URL> DEST --recursive --check-md5 FailIfDifferent``
  (``--overwrite=false``, so the re-run skips what exists); ``rclone copy`` (rclone checks the
  MD5 of every download; the re-run compares size and modification time). 32 transfers each.
* **DataLoader**: one epoch over the whole training set, ``batch_size=32``, ``num_workers=2``,
  samples as raw bytes (no JPEG decoding, which costs the same whatever the source), over
  ``TrainsetDataset``, ``ShardDataset`` (shards exported in-process by the export use case, 20 MB
  each), the Parquet export read by Hugging Face ``datasets`` (its files copied to local disk
  first: ``datasets`` has no Azurite filesystem here), azstoragetorch's ``BlobDataset`` on the same
  blobs (installed apart, see below), and an imagefolder ``corpus pull`` read from local disk by
  torchvision ``ImageFolder``'s rule (sorted class folders; torchvision itself does not install
  beside this torch build).

    .venv/bin/python bench/dataout_bench.py     # AZCOPY=path/to/azcopy to override

azstoragetorch 0.2.0 pins ``azure-storage-blob<=12.27``, below what corpus needs, so it is not
installed in the project's environment: ``pip install --no-deps --target DIR azstoragetorch==0.2.0``
and ``AZSTORAGETORCH_PATH=DIR``; without it that row is skipped and says so.

``--storage-connection-string-env VAR`` runs it against the storage account in ``$VAR`` instead of
a private Azurite (``bench/account.py``: the domain, trainsets and exports containers under a per-run
prefix; the ``TrainingSets`` table, whose name is fixed, claimed; all deleted at the end).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from azure.storage.blob import ContentSettings  # noqa: E402

from bench.account import Names, add_storage_option, open_storage  # noqa: E402
from bench.upload_bench import CONCURRENCY, find_azcopy, photo_like, timed  # noqa: E402
from corpus.domain.manifest import ManifestEntry, hex_to_b64  # noqa: E402
from corpus.store.settings import TABLE_TRAINSETS, Settings  # noqa: E402
from corpus.store.storage import Clients  # noqa: E402
from tests.trainset_support import publish_ready  # noqa: E402

TAGS = ["robin", "jay", "parrot", "owl", "wren"]
SPLITS = ("train",) * 8 + ("val", "test")


def make_trainset(clients: Clients, n: int, size: int, names: Names | None = None) -> list[ManifestEntry]:
    names = names or Names()
    domain = names.domain("bench")
    clients.ensure(containers=(domain, names.container("trainsets"), names.container("exports")))
    bases = [photo_like(i, size) for i in range(16)]
    bench = clients.container(domain)

    def one(i: int) -> ManifestEntry:
        tag = TAGS[i % len(TAGS)]
        data = bases[i % len(bases)] + i.to_bytes(4, "big")
        md5 = hashlib.md5(data).digest()
        blob = f"original/{tag}/v1/img{i:06d}.jpg"
        bench.upload_blob(blob, data, overwrite=True,
                          content_settings=ContentSettings(content_type="image/jpeg", content_md5=bytearray(md5)))  # fmt: skip
        b64 = hex_to_b64(md5.hex())
        split = SPLITS[int(md5.hex(), 16) % len(SPLITS)]
        return ManifestEntry(domain, blob, b64, len(data), 200, 200, domain, tag, "v1", None, blob, b64, (tag,), split)

    with ThreadPoolExecutor(16) as pool:
        entries = list(pool.map(one, range(n)))
    publish_ready(clients, names.container("trainsets"), "bench-set", "1", entries)  # manifest + a ready TrainingSets row
    return entries


def tree_count(root: Path) -> int:
    return sum(len([f for f in files if f.endswith(".jpg")]) for _, _, files in os.walk(root))


class _Rt:
    """The export use case's runtime seam, with the fan-out collected instead of queued."""

    def __init__(self, settings: Settings, clients: Clients) -> None:
        from corpus.store.azure_ports import AzureBlobStore

        self.settings, self.clients, self.sent = settings, clients, []
        self.blobs = AzureBlobStore(clients)

    def send(self, queue: str, text: str) -> None:
        self.sent.append(text)

    def ensure_container(self, name: str) -> None:
        pass


def collate(batch: list[Any]) -> list[Any]:
    return batch


class ImageFolderBytes:
    """torchvision ``ImageFolder``'s documented rule on a pulled imagefolder split: classes are the
    sorted folder names (``os.scandir``), samples sorted per class; (bytes, class index), no decoding."""

    def __init__(self, root: Path) -> None:
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.samples = [(str(p), i) for i, c in enumerate(self.classes) for p in sorted((root / c).iterdir()) if p.is_file()]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        path, label = self.samples[i]
        with open(path, "rb") as f:
            return f.read(), label


class HFBytes:
    """A Hugging Face ``datasets`` split, images left undecoded (bytes), as a map-style dataset."""

    def __init__(self, files: list[str]) -> None:
        import datasets

        ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train")
        self.ds = ds.cast_column("image", datasets.Image(decode=False))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        row = self.ds[i]
        return row["image"]["bytes"], row["label"]


def torch_concat(parts: list[Any]) -> Any:
    from torch.utils.data import ConcatDataset

    return ConcatDataset(parts)


def azst_bytes(blob: Any) -> bytes:
    with blob.reader() as r:
        return bytes(r.read())


def epoch(dataset: Any, n: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=32, num_workers=2, collate_fn=collate)
    t0 = time.perf_counter()
    seen = sum(len(batch) for batch in loader)
    secs = time.perf_counter() - t0
    assert seen == n, f"{seen} samples of {n}"
    return {"samples": seen, "seconds": round(secs, 2), "samples_per_s": round(seen / secs, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=80_000)
    ap.add_argument("--reruns", type=int, default=3)
    ap.add_argument("--tools", default="corpus,azcopy,rclone")
    ap.add_argument("--skip-pull", action="store_true", help="only the DataLoader comparison")
    ap.add_argument("--skip-dataloader", action="store_true", help="only the pull comparison")
    ap.add_argument(
        "--corpus-trees",
        default="",
        help="LABEL=DIR,...: `corpus pull` from each of these code trees, each into its own folder "
        "(e.g. before=/tmp/base,after=.), in place of `corpus` in --tools",
    )
    add_storage_option(ap)
    args = ap.parse_args()
    trees = {k: str(Path(v).resolve()) for k, _, v in (t.partition("=") for t in args.corpus_trees.split(",") if t)}
    tools = args.tools.split(",")
    if trees and "corpus" in tools:
        i = tools.index("corpus")
        tools[i : i + 1] = list(trees)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        storage = open_storage(args.storage_connection_string_env, tmp)
        results["storage"] = storage.server
        try:
            storage.claim(tables=(TABLE_TRAINSETS,))  # an external account's; nothing on the private Azurite
            names = storage.names
            domain = names.domain("bench")
            clients = storage.clients
            t0 = time.perf_counter()
            entries = make_trainset(clients, args.images, args.size, names)
            total = sum(e.size for e in entries)
            print(
                f"training set of {len(entries)} images, {total / 1e6:.0f} MB in {time.perf_counter() - t0:.0f}s", file=sys.stderr
            )
            blob_url = storage.blob_url
            sas = storage.container_sas(domain, "rl")
            # The CA-bundle variables some machines set make corpus use requests instead of http.client;
            # they mean nothing to a plain-http emulator, so every tool runs without them (against an
            # external account, over https, they stay: the machine may need them to trust its endpoint).
            # Likewise PYTHONDONTWRITEBYTECODE (set on this machine): installed, corpus's bytecode is cached.
            ca_bundles = () if storage.external else ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
            dropped = (*ca_bundles, "PYTHONDONTWRITEBYTECODE")
            base = {k: v for k, v in os.environ.items() if k not in dropped}
            env = {**base, **storage.env(), "CORPUS_CACHE_DIR": str(tmp / "cache"),
                   "PYTHONPATH": str(REPO), "AZCOPY_LOG_LOCATION": str(tmp / "azlogs"),
                   "AZCOPY_JOB_PLAN_LOCATION": str(tmp / "azplans"), "AZCOPY_DISABLE_SYSLOG": "true",
                   "AZCOPY_CONCURRENCY_VALUE": str(CONCURRENCY), "RCLONE_CONFIG_AZ_TYPE": "azureblob",
                   "RCLONE_CONFIG_AZ_SAS_URL": f"{blob_url}/{domain}?{sas}"}  # fmt: skip
            azcopy = find_azcopy(tmp) if "azcopy" in tools else ""
            dest = {t: tmp / f"pull-{t}" for t in tools}
            commands = {
                "corpus": [sys.executable, "-m", "corpus", "pull", "bench-set:1", str(dest.get("corpus")), "--layout", "corpus",
                           "--concurrency", str(CONCURRENCY), "--json"],
                "azcopy": [azcopy, "copy", f"{blob_url}/{domain}/original?{sas}", str(dest.get("azcopy")), "--recursive",
                           "--from-to", "BlobLocal", "--check-md5", "FailIfDifferent", "--overwrite=false", "--log-level=ERROR",
                           "--output-level=quiet", "--skip-version-check"],
                "rclone": ["rclone", "copy", f"az:{domain}/original", str(dest.get("rclone")), "--transfers", str(CONCURRENCY),
                           "--checkers", str(CONCURRENCY), "-q"],
            }  # fmt: skip
            cwd: dict[str, str | None] = {}
            envs = {t: env for t in tools}
            for label, tree in trees.items():
                dest[label] = tmp / f"pull-{label}"
                commands[label] = [*commands["corpus"][:5], str(dest[label]), *commands["corpus"][6:]]
                envs[label], cwd[label] = {**env, "PYTHONPATH": tree}, tree  # `python -m` looks in the cwd first
            pull: dict[str, Any] = {"images": len(entries), "bytes": total, "trees": trees}
            for tool in [] if args.skip_pull else tools:
                secs, _ = timed(commands[tool], envs[tool], cwd.get(tool))
                assert tree_count(dest[tool]) == len(entries), f"{tool} pulled {tree_count(dest[tool])}"
                pull[tool] = {"first_s": round(secs, 2), "first_files_per_s": round(len(entries) / secs, 1), "reruns_s": []}
                print(json.dumps({tool: pull[tool]}), file=sys.stderr, flush=True)
            for i in range(0 if args.skip_pull else args.reruns):
                for tool in tools if i % 2 == 0 else tools[::-1]:
                    secs, proc = timed(commands[tool], envs[tool], cwd.get(tool))
                    if tool == "corpus" or tool in trees:
                        out = json.loads(proc.stdout)
                        assert out["downloaded"] == 0 and out["failed"] == 0 and out["present"] == len(entries), out
                    pull[tool]["reruns_s"].append(round(secs, 2))
            for tool in [] if args.skip_pull else tools:
                pull[tool]["rerun_s"] = statistics.median(pull[tool]["reruns_s"])
            for mine in [t for t in tools if t == "corpus" or t in trees]:
                for peer in ("azcopy", "rclone"):
                    if mine in pull and peer in pull:
                        tag = "" if mine == "corpus" else f"{mine}_"
                        pull[f"ratio_first_{tag}vs_{peer}"] = round(
                            pull[mine]["first_files_per_s"] / pull[peer]["first_files_per_s"], 2
                        )
                        pull[f"ratio_rerun_{tag}vs_{peer}"] = round(pull[peer]["rerun_s"] / pull[mine]["rerun_s"], 2)
            pull["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
            results["pull"] = pull
            print(json.dumps({"pull": pull}), file=sys.stderr, flush=True)

            if not args.skip_dataloader:  # -- DataLoader ---------------------------------------------------------------------
                os.environ.update(storage.env())
                settings = Settings.from_env(storage.env())
                from corpus.app.exports import on_export_message
                from corpus.dataset import ShardDataset, TrainsetDataset
                from corpus.domain.exports import ExportParams, ExportRequest, parse_export_message

                rt = _Rt(settings, clients)
                loading: dict[str, Any] = {}
                for fmt in ("webdataset", "parquet"):
                    rt.sent.clear()
                    t0 = time.perf_counter()
                    req = ExportRequest("bench-set", "1", ExportParams(fmt, 20_000_000))
                    on_export_message(rt, req)  # type: ignore[arg-type]
                    for body in list(rt.sent):
                        on_export_message(rt, parse_export_message(body))  # type: ignore[arg-type]
                    loading[f"export_{fmt}_s"] = round(time.perf_counter() - t0, 2)
                    loading[f"{fmt}_shards"] = len(rt.sent)
                n = len(entries)
                loading["TrainsetDataset"] = epoch(TrainsetDataset("bench-set", "1", decode=False, settings=settings), n)
                loading["ShardDataset"] = epoch(ShardDataset("bench-set", "1", decode=False, settings=settings), n)
                pq_prefix = f"bench-set/1/{ExportParams('parquet', 20_000_000).export_id()}/"
                exports = clients.container(settings.exports_container)
                files = []
                for b in exports.list_blobs(name_starts_with=pq_prefix + "data/"):
                    path = tmp / "parquet" / b.name.rpartition("/")[2]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(exports.download_blob(b.name).readall())
                    files.append(str(path))
                loading["datasets parquet (local copy)"] = epoch(HFBytes(files), n)
                azst = os.environ.get("AZSTORAGETORCH_PATH")
                if azst:
                    sys.path.insert(0, azst)
                    from azstoragetorch.datasets import BlobDataset

                    try:
                        url = f"{blob_url}/{domain}?{sas}"
                        ds = BlobDataset.from_container_url(url, prefix="original/", transform=azst_bytes)
                        loading["azstoragetorch.BlobDataset"] = epoch(ds, n)
                    except Exception as exc:
                        why = f"{type(exc).__name__}: {str(exc)[:300]}"
                        loading["azstoragetorch.BlobDataset"] = f"did not run against {storage.server['blob_endpoint']}: {why}"
                else:
                    loading["azstoragetorch.BlobDataset"] = "not measured: AZSTORAGETORCH_PATH unset"
                folder = tmp / "imagefolder"
                timed([sys.executable, "-m", "corpus", "pull", "bench-set:1", str(folder), "--json"], env)
                total_local = 0
                for split in sorted(os.listdir(folder)):
                    if (folder / split).is_dir():
                        ds_split = ImageFolderBytes(folder / split)
                        total_local += len(ds_split)
                loading["ImageFolder rule, local pulled folder (all splits)"] = epoch(
                    torch_concat([ImageFolderBytes(folder / s) for s in sorted(os.listdir(folder)) if (folder / s).is_dir()]), n
                )
                assert total_local == n
                for name, value in list(loading.items()):
                    if isinstance(value, dict) and name != "ImageFolder rule, local pulled folder (all splits)":
                        base = loading["ImageFolder rule, local pulled folder (all splits)"]["samples_per_s"]
                        loading[f"ratio {name} / ImageFolder"] = round(value["samples_per_s"] / base, 2)
                loading["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
                results["dataloader"] = loading
        finally:
            storage.close()
            shutil.rmtree(tmp, ignore_errors=True)
    results["command"] = " ".join(sys.argv)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
