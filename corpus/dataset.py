"""PyTorch datasets over a training set: ``pip install -e '.[torch]'`` from a clone (distribution ``corpus-images``).

* :class:`TrainsetDataset` — map-style over the training set's manifest: one Get Blob per sample,
  so any sampler (shuffling, distributed) works; ``__getitems__`` fetches a whole batch
  concurrently, which is how it prefetches.
  Its state is O(block) plus 8 bytes a sample: the manifest is streamed once into a local spill
  file of the split's lines (deleted with the dataset) and only their offsets stay in memory.
* :class:`ShardDataset` — iterable over the WebDataset shards ``corpus export --format webdataset``
  wrote (``export=`` names one export when a training set has several): shards are divided
  between ``DataLoader`` workers and distributed ranks (shard ``i`` goes to reader
  ``i mod (world_size × num_workers)``), each read sequentially by range requests in a background
  thread that keeps ``prefetch`` samples ready; with ``shuffle=True`` the shard order changes per
  epoch (:meth:`ShardDataset.set_epoch`) and a buffer mixes samples. The export already mixed
  the classes into every shard. Every sample is read exactly once per epoch when the number of
  shards is at least the number of readers (fewer shards leave readers idle).

Both yield ``(image, class_index)``: ``image`` is a ``PIL.Image`` in RGB (or the raw bytes with
``decode=False``), passed through ``transform``; ``class_index`` is the index of the image's class
in ``classes``. An image's class is its label, or its sorted labels joined by ``+`` when it has
several (``_unlabeled`` when none), the same names ``corpus pull --layout imagefolder`` gives its
folders; ``classes`` defaults to those names in the order of their folder names
(:func:`corpus.domain.layouts.class_order`, over the whole training set), exactly as
torchvision's ``ImageFolder`` sorts a pulled copy's folders, so the indices agree with it (and
with the export's ``classes.txt`` and ``.cls`` members). Pass ``classes=[...]`` to fix another order.
With ``return_meta=True`` a sample is a dict: ``image``, ``label``, and the manifest fields
(``container``, ``blob``, ``md5``, ``labels``, ``split``, ``width``, ``height``, ``source`` …).

Every sample's MD5 is checked against the manifest (``verify_md5=False`` skips it); a mismatch
raises :class:`IntegrityError` naming the blob. Settings and credentials are the CLI's
(``local.settings.json`` in the working directory, then the environment; or ``settings=``).
Clients are made in each worker process on first use and never pickled, so the datasets work
with ``DataLoader(num_workers>0)`` under both ``fork`` and ``spawn``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import random
import tarfile
import tempfile
import threading
import weakref
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from corpus.domain.errors import CorpusError
from corpus.domain.layouts import class_order, label_key
from corpus.domain.manifest import ManifestEntry, b64_to_hex, parse_line
from corpus.pull.fetch import BlobFetcher, BlobNotFound
from corpus.pull.sources import EntryReader
from corpus.store.settings import Settings, load_local_settings

__all__ = ["IntegrityError", "ShardDataset", "TrainsetDataset"]


class IntegrityError(CorpusError):
    """A sample's bytes do not match the MD5 the manifest records."""


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    load_local_settings(Path.cwd())
    return Settings.from_env()


def _decode(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def _meta(e: ManifestEntry) -> dict[str, Any]:
    m = e.to_json()
    m["class"] = label_key(e.labels)
    return m


class _Lazy:
    """Per-process state: a fetcher and a thread pool, created on first use, dropped when pickled."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pid = -1
        self._fetcher: BlobFetcher | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def _check(self) -> None:
        if self._pid != os.getpid():  # a fresh process (fork): nothing inherited is reused
            self._pid = os.getpid()
            self._fetcher = None
            self._pool = None

    def fetcher(self) -> BlobFetcher:
        with self._lock:
            self._check()
            if self._fetcher is None:
                self._fetcher = BlobFetcher(self.settings.connection)
            return self._fetcher

    def pool(self, threads: int) -> ThreadPoolExecutor:
        with self._lock:
            self._check()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="corpus-dataset")
            return self._pool


def _class_index(classes: Sequence[str]) -> dict[str, int]:
    if len(set(classes)) != len(classes):
        raise ValueError("classes must be distinct")
    return {c: i for i, c in enumerate(classes)}


class _Spill:
    """Manifest lines in a local file, by index: ``array`` of offsets in memory (8 bytes a line).

    Pickled by path (``DataLoader`` workers, ``spawn`` included, reopen it); the file is removed
    when the object that created it is collected, or at exit."""

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="corpus-manifest-", suffix=".jsonl")
        self._w: Any = os.fdopen(fd, "wb")
        self.offsets = array("Q", [0])
        self._fd = -1
        self._pid = -1
        self._owner = weakref.finalize(self, _remove, self.path)

    def add(self, e: ManifestEntry) -> None:
        line = e.to_line().encode("utf-8") + b"\n"
        self._w.write(line)
        self.offsets.append(self.offsets[-1] + len(line))

    def seal(self) -> None:
        self._w.close()
        self._w = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> ManifestEntry:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        start, end = self.offsets[index], self.offsets[index + 1]
        return parse_line(os.pread(self._fd, end - start, start), index + 1)

    def __iter__(self) -> Iterator[ManifestEntry]:
        return (self[i] for i in range(len(self)))

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "offsets": self.offsets}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.offsets = state["path"], state["offsets"]
        self._w, self._fd, self._pid = None, -1, -1  # not the owner: never removes the file


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class TrainsetDataset(Dataset[Any]):
    """Map-style dataset over training set ``name``:``version`` (see the module docstring)."""

    def __init__(
        self,
        name: str,
        version: str,
        split: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
        return_meta: bool = False,
        verify_md5: bool = True,
        decode: bool = True,
        prefetch: int = 16,
        settings: Settings | None = None,
    ) -> None:
        s = _settings(settings)
        seen: set[str] = set()
        kept: set[str] = set()
        self._spill = _Spill()
        for e in EntryReader(s).manifest(name, version):  # streamed: O(block) + 8 bytes a kept entry
            seen.add(label_key(e.labels))
            if split is None or e.split == split:
                kept.add(label_key(e.labels))
                self._spill.add(e)
        self._spill.seal()
        self.classes: list[str] = list(classes) if classes is not None else class_order(seen)
        self.class_to_idx = _class_index(self.classes)
        unknown = sorted(kept - set(self.class_to_idx))
        if unknown:
            raise ValueError(f"images of classes {unknown[:5]} are not in classes")
        self.name, self.version, self.split = name, version, split
        self.transform = transform
        self.return_meta, self.verify_md5, self.decode = return_meta, verify_md5, decode
        self.prefetch = max(1, prefetch)
        self._lazy = _Lazy(s)

    def __len__(self) -> int:
        return len(self._spill)

    @property
    def entries(self) -> _Spill:
        """The kept manifest entries, by index (read from the spill file)."""
        return self._spill

    def _fetch(self, e: ManifestEntry) -> bytes:
        data = self._lazy.fetcher().get(e.container, e.blob)
        if self.verify_md5 and (got := hashlib.md5(data, usedforsecurity=False).hexdigest()) != e.md5_hex:
            raise IntegrityError(
                f"{e.container}/{e.blob} does not match the manifest's MD5 {e.md5_hex}: read {len(data)} bytes, MD5 {got}"
            )
        return data

    def _sample(self, e: ManifestEntry, data: bytes) -> Any:
        image = _decode(data) if self.decode else data
        if self.transform is not None:
            image = self.transform(image)
        try:
            label = self.class_to_idx[label_key(e.labels)]
        except KeyError:
            raise ValueError(f"{e.container}/{e.blob}: class {label_key(e.labels)!r} is not in classes") from None
        if self.return_meta:
            return {"image": image, "label": label, **_meta(e)}
        return image, label

    def __getitem__(self, index: int) -> Any:
        e = self.entries[index]
        return self._sample(e, self._fetch(e))

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A batch, its blobs fetched ``prefetch`` at a time (the DataLoader calls this per batch)."""
        entries = [self.entries[i] for i in indices]
        datas = list(self._lazy.pool(self.prefetch).map(self._fetch, entries))
        return [self._sample(e, d) for e, d in zip(entries, datas, strict=True)]


class _RangeReader(io.RawIOBase):
    """A blob read sequentially in ``chunk``-byte range requests, the next one always in flight:
    the stream a tar reader needs, with the network overlapping the parsing."""

    def __init__(self, fetcher: BlobFetcher, container: str, blob: str, size: int, chunk: int) -> None:
        self.fetcher, self.container, self.blob, self.size, self.chunk = fetcher, container, blob, size, chunk
        self.next_start = 0
        self.buf = memoryview(b"")
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-range")
        self._pending = self._fetch_next()

    def _fetch_next(self) -> Future[bytes] | None:
        if self.next_start >= self.size:
            return None
        start, n = self.next_start, min(self.chunk, self.size - self.next_start)
        self.next_start += n
        return self._ahead.submit(self.fetcher.get, self.container, self.blob, start, n)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self.buf and self._pending is not None:
            self.buf = memoryview(self._pending.result())
            self._pending = self._fetch_next()
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]  # a view: no copy of the rest
        return n

    def close(self) -> None:
        self._ahead.shutdown(wait=False, cancel_futures=True)
        super().close()


_END = object()


def find_export(settings: Settings, name: str, version: str, fmt: str) -> str:
    """The id of the one finished ``fmt`` export of ``name``:``version`` (one with ``croissant.json``,
    written last); an error naming them all when there are several (pass ``export=``) or none."""
    from corpus.store.storage import FAIL_FAST, Clients

    base = f"{name}/{version}/"
    exports = Clients(settings.connection, dict(FAIL_FAST)).container(settings.exports_container)
    listed = exports.list_blobs(name_starts_with=f"{base}{fmt}-") if exports.exists() else []
    done = sorted({b.name[len(base) :].split("/")[0] for b in listed if b.name.endswith("/croissant.json")})
    if len(done) == 1:
        return done[0]
    if not done:
        hint = f"corpus export {name}:{version} --format {fmt} --wait"
        raise CorpusError(f"{name}:{version} has no finished {fmt} export (run `{hint}`)")
    raise CorpusError(f"{name}:{version} has several {fmt} exports ({', '.join(done)}): pass export=<one of them>")


class ShardDataset(IterableDataset[Any]):
    """Iterable dataset over the exported WebDataset shards of ``name``:``version`` (module docstring)."""

    def __init__(
        self,
        name: str,
        version: str,
        split: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
        return_meta: bool = False,
        verify_md5: bool = True,
        decode: bool = True,
        prefetch: int = 64,
        chunk_bytes: int = 8 * 1024 * 1024,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        export: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        s = _settings(settings)
        self._lazy = _Lazy(s)
        self.export = export or find_export(s, name, version, "webdataset")
        prefix = f"{name}/{version}/{self.export}/"
        try:
            plan = json.loads(self._lazy.fetcher().get(s.exports_container, prefix + "plan.json"))
        except BlobNotFound as exc:
            raise CorpusError(f"{name}:{version} has no export {self.export}") from exc
        if plan.get("params", {}).get("format") != "webdataset":
            raise CorpusError(f"{name}:{version} export {self.export} is not a webdataset export")
        self.classes = list(classes) if classes is not None else list(plan["classes"])
        self.class_to_idx = _class_index(self.classes)
        self._same_classes = self.classes == list(plan["classes"])  # then the .cls member is the index
        mine = [sh for sh in plan["shards"] if split is None or sh["split"] == split]
        self.shards: list[str] = [prefix + sh["file"] for sh in mine]
        self.samples = sum(int(sh["count"]) for sh in mine)
        self.container = s.exports_container
        self.name, self.version, self.split = name, version, split
        self.transform = transform
        self.return_meta, self.verify_md5, self.decode = return_meta, verify_md5, decode
        self.prefetch, self.chunk_bytes = max(1, prefetch), chunk_bytes
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.shuffle_buffer, self.epoch = shuffle, seed, max(1, shuffle_buffer), 0

    def set_epoch(self, epoch: int) -> None:
        """With ``shuffle``: the epoch whose order to use (call before each epoch, as with
        ``DistributedSampler``); every worker and rank derives the same shard order from it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def _my_shards(self) -> list[str]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            rank, world = 0, 1
            try:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    rank, world = dist.get_rank(), dist.get_world_size()
            except ImportError:
                pass
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = rank * nw + wid, world * nw
        order = list(self.shards)
        if self.shuffle:  # the same permutation in every reader: still a partition of the shards
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)  # noqa: S311 - reproducible order, not secrecy
        return order[reader::readers]

    def _items(self, out: queue.Queue[Any]) -> Iterator[tuple[bytes, dict[str, Any]]]:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _shuffled(self, items: Iterator[tuple[bytes, dict[str, Any]]]) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """A shuffle buffer of ``shuffle_buffer`` samples (as WebDataset's), seeded per epoch and reader."""
        info = get_worker_info()
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{info.id if info else 0}")  # noqa: S311
        buf: list[tuple[bytes, dict[str, Any]]] = []
        for item in items:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            i = rng.randrange(len(buf))
            buf[i], item = item, buf[i]
            yield item
        rng.shuffle(buf)
        yield from buf

    def _read_shards(self, shards: list[str], out: queue.Queue[Any], stop: threading.Event) -> None:
        try:
            fetcher = self._lazy.fetcher()
            for tar_name in shards:
                index = json.loads(fetcher.get(self.container, tar_name.removesuffix(".tar") + ".index.json"))
                raw = _RangeReader(fetcher, self.container, tar_name, int(index["size"]), self.chunk_bytes)
                with io.BufferedReader(raw, 1024 * 1024) as reader, tarfile.open(fileobj=reader, mode="r|") as tar:
                    image: bytes | None = None
                    cls: bytes | None = None
                    for member in tar:
                        f = tar.extractfile(member)
                        body = f.read() if f is not None else b""
                        ext = member.name.rpartition(".")[2]
                        if ext == "cls":
                            cls = body
                        elif ext != "json":
                            image = body
                        else:  # a sample's last member: image, .cls, .json
                            meta = json.loads(body)
                            if image is None:
                                raise CorpusError(f"{tar_name}: {member.name} has no image before it")
                            meta["__cls__"] = int(cls) if cls is not None else None
                            while not stop.is_set():
                                try:
                                    out.put((image, meta), timeout=0.5)
                                    break
                                except queue.Full:
                                    continue
                            image = cls = None
                        if stop.is_set():
                            return
            out.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
            out.put(exc)

    def __iter__(self) -> Iterator[Any]:
        out: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        thread = threading.Thread(target=self._read_shards, args=(self._my_shards(), out, stop), daemon=True)
        thread.start()
        try:
            items = self._items(out)
            for data, meta in self._shuffled(items) if self.shuffle else items:
                if self.verify_md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != b64_to_hex(meta["md5"]):
                    raise IntegrityError(f"{meta['container']}/{meta['blob']} in its shard does not match its MD5 {meta['md5']}")
                image = _decode(data) if self.decode else data
                if self.transform is not None:
                    image = self.transform(image)
                stored = meta.pop("__cls__")
                label = stored if self._same_classes and stored is not None else self.class_to_idx[label_key(meta["labels"])]
                if self.return_meta:
                    meta = {k: v for k, v in meta.items() if k != "__key__"} | {"key": meta["__key__"]}
                    meta["class"] = label_key(meta["labels"])
                    yield {"image": image, "label": label, **meta}
                else:
                    yield image, label
        finally:
            stop.set()
