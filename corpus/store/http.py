"""The one HTTP session every storage client in the process shares.

Its connection pool is sized for the thread pools that share it (see :data:`POOL_SIZE`): the SDK default (10 per host) would
serialise a 24-wide batch and log "connection pool is full" warnings. It lives apart from
:mod:`corpus.store.storage` so that :mod:`corpus.transfer.bloblist` can use it without loading the Azure SDK.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import requests
import requests.adapters

POOL_SIZE = 512
"""Connections kept per endpoint (blob, queue, table), at least the threads that may use one at
once in one process: five queue functions x 24 messages (host.json: batchSize 16 +
newBatchThreshold 8) + the blob trigger's 4 = 124 invocations, and the messages of one function
may each run a pool of their own (an export shard job downloads with 16 threads: 24 x 16 = 384);
124 + 384 = 508. Below that, urllib3 discards connections with "Connection pool is full" (64 did,
during exports). The limit opens nothing by itself: it is how many idle connections are kept."""

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def proxies_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True if the environment names a proxy (any case), as ``requests`` would read it."""
    env = os.environ if environ is None else environ
    return any(v for k, v in env.items() if k.lower() in PROXY_VARIABLES)


def configure(session: requests.Session, environ: Mapping[str, str] | None = None) -> None:
    """Decide once what ``requests`` would otherwise look up in the environment on every request.

    With ``trust_env`` (the default) every request re-reads the proxy variables, ``no_proxy`` and
    ``~/.netrc`` (6.9 % of the host's CPU in issue 26's profile). Where no proxy is configured
    there is nothing to find: ``trust_env`` is turned off and the one setting it would still have
    supplied, the CA bundle, is passed explicitly (:func:`ca_verify`: on the session here, and as
    ``connection_verify`` to the SDK's transport, whose per-request ``verify=True`` would otherwise
    override the session's). Storage requests carry their own ``Authorization``, so ``.netrc`` never
    applied to them.
    """
    env = os.environ if environ is None else environ
    if proxies_configured(env):
        return
    session.trust_env = False
    session.verify = ca_verify(env)


def ca_verify(environ: Mapping[str, str] | None = None) -> str | bool:
    """What to verify TLS against: the bundle ``requests`` would read from the environment
    (``REQUESTS_CA_BUNDLE``, then ``CURL_CA_BUNDLE``), else ``True`` (its default bundle)."""
    env = os.environ if environ is None else environ
    return env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or True


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
            configure(session)
            _session = session
        return _session


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) gets a session of its own: sharing the parent's pooled
    keep-alive sockets would interleave two processes' requests on one connection (crossed responses)."""
    global _lock, _session
    _lock = threading.Lock()
    _session = None


os.register_at_fork(after_in_child=_forget_in_child)
