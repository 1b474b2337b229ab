"""HTTP triggers in ``corpus host``: a loopback server that calls them as the Functions host does.

Each request is matched against the functions' route templates (with ``host.json``'s
``extensions.http.routePrefix``), turned into an ``azure.functions.HttpRequest`` by the library's
own ``HttpRequestConverter`` from the same ``http`` datum the host sends (method, url, headers,
query, route params, body), and the function's ``HttpResponse`` is read back through
``HttpResponseConverter`` (status, headers, body). As in the host:

* a path no template matches, or a method the function does not declare, is ``404``;
* a function that raises gives ``500`` with an empty body (the exception is logged, never sent);
* ``query`` holds one value per name; repeated names are joined with ``,`` (ASP.NET's
  ``StringValues``); the full URL, with every value, is in ``HttpRequest.url``.

Authentication is not emulated: the server listens on 127.0.0.1 only. In Azure, App Service
Authentication stands in front of the app (see ``infra/``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azure.functions import meta
from azure.functions.http import HttpRequestConverter, HttpResponseConverter

from corpus.devhost.discovery import Target
from corpus.devhost.routes import Route, parse
from corpus.domain.errors import ConfigError

log = logging.getLogger("corpus.host")

MAX_BODY = 100 * 1024 * 1024
"""The Functions host's request size limit (``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT`` default, 100 MB)."""


class HttpRouter:
    """The HTTP targets, most specific route first."""

    def __init__(self, targets: list[Target], prefix: str) -> None:
        routes = [(parse(t.source, prefix), t) for t in targets if t.kind == "http"]
        self.routes: list[tuple[Route, Target]] = sorted(routes, key=lambda rt: rt[0].precedence)

    def find(self, method: str, path: str) -> tuple[Target, dict[str, str]] | None:
        for route, target in self.routes:
            values = route.match(path)
            if values is not None and (not target.methods or method.upper() in target.methods):
                return target, values
        return None


def _datum_request(method: str, url: str, headers: dict[str, str], route_values: dict[str, str], body: bytes) -> Any:
    query: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    datum = meta.Datum(
        {
            "method": meta.Datum(method, "string"),
            "url": meta.Datum(url, "string"),
            "headers": {k: meta.Datum(v, "string") for k, v in headers.items()},
            "query": {k: meta.Datum(v, "string") for k, v in query.items()},
            "params": {k: meta.Datum(v, "string") for k, v in route_values.items()},
            "body": meta.Datum(body, "bytes"),
        },
        "http",
    )
    return HttpRequestConverter.decode(datum, trigger_metadata=None)


class _Handler(BaseHTTPRequestHandler):
    server_version = "corpus-host"
    protocol_version = "HTTP/1.1"
    router: HttpRouter
    base_url: str
    run: Callable[[Callable[[], Any]], Any]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _serve(self) -> None:
        method = self.command
        path = urlsplit(self.path).path
        found = self.router.find(method, path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"content-type": "text/plain"}, b"request body too large")
            return
        body = self.rfile.read(length) if length else b""
        if found is None:
            self._send(404, {}, b"")
            return
        target, values = found
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = _datum_request(method, self.base_url + self.path, headers, values, body)
        try:
            # On the worker's threads, as in Azure (where HTTP invocations share the worker's pool).
            result = self.run(lambda: target.call(**{target.arg_name: request}))
            datum = HttpResponseConverter.encode(result, expected_type=None)
        except Exception:
            log.exception("%s failed on %s %s", target.name, method, path)
            self._send(500, {}, b"")
            return
        if datum.type == "string":  # a function may return a plain string
            self._send(200, {"content-type": "text/plain; charset=utf-8"}, str(datum.value).encode())
            return
        value = datum.value
        out_headers = {k: str(v.value) for k, v in value["headers"].items()}
        self._send(int(value["status_code"].value), out_headers, value["body"].value or b"")

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        no_body = self.command == "HEAD" or status == 304 or status < 200
        self.send_header("Content-Length", "0" if no_body else str(len(body)))
        self.end_headers()
        if not no_body:
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve  # noqa: N815 - the stdlib's names


class HttpHost:
    """The server, on its own threads; ``port=0`` lets the system choose (see :attr:`url`)."""

    def __init__(
        self,
        targets: list[Target],
        prefix: str,
        port: int,
        host: str = "127.0.0.1",
        run: Callable[[Callable[[], Any]], Any] | None = None,
    ) -> None:
        router = HttpRouter(targets, prefix)
        runner = staticmethod(run or (lambda fn: fn()))
        handler: type[_Handler] = type("Handler", (_Handler,), {"router": router, "base_url": "", "run": runner})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc}); is another `corpus host` running? use --port") from exc
        self.server.daemon_threads = True
        handler.base_url = self.url
        self.router = router
        self._thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()
        for route, target in self.router.routes:
            methods = ",".join(target.methods) or "ALL"
            log.info("http: %s [%s] %s/%s", target.name, methods, self.url, route.template)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
