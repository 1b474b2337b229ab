"""The one HTTP session every storage client in the process shares.

Its connection pool is sized for the throttle: the SDK default (10 connections per host) would
serialise a 24-wide batch and log "connection pool is full" warnings. It lives apart from
:mod:`corpus.store.storage` so that :mod:`corpus.transfer.bloblist` can use it without loading the Azure SDK.
"""

from __future__ import annotations

import os
import threading

import requests
import requests.adapters

POOL_SIZE = 64

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
