"""The one HTTP session every storage client in the process shares.

Its connection pool is sized for the thread pools that share it (see :data:`POOL_SIZE`): the SDK default (10 per host) would
serialise a 24-wide batch and log "connection pool is full" warnings. It lives apart from
:mod:`corpus.store.storage` so that :mod:`corpus.transfer.bloblist` can use it without loading the Azure SDK.
"""

from __future__ import annotations

import os
import threading

import requests
import requests.adapters

POOL_SIZE = 512
"""Connections kept per endpoint (blob, queue, table), at least the threads that may use one at
once in one process: five queue functions x 24 messages (host.json: batchSize 16 +
newBatchThreshold 8) + the blob trigger's 4 = 124 invocations, and the messages of one function
may each run a pool of their own (an export shard job downloads with 16 threads: 24 x 16 = 384);
124 + 384 = 508. Below that, urllib3 discards connections with "Connection pool is full" (64 did,
during exports). The limit opens nothing by itself: it is how many idle connections are kept."""

_lock = threading.Lock()
_session: requests.Session | None = None


def shared_session() -> requests.Session:
    global _session
    with _lock:
        if _session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=POOL_SIZE)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _session = session
        return _session


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) gets a session of its own: sharing the parent's pooled
    keep-alive sockets would interleave two processes' requests on one connection (crossed responses)."""
    global _lock, _session
    _lock = threading.Lock()
    _session = None


os.register_at_fork(after_in_child=_forget_in_child)
