"""``corpus gallery``: the URL of the gallery a running ``corpus host`` serves (and open it).

It starts nothing: the gallery is HTTP functions of the app, so the host that runs the app serves
it (``corpus host``, or ``func start``, both on 127.0.0.1:7071 by default). In Azure the same
pages are at ``https://<function app>.azurewebsites.net/gallery``, behind Entra ID sign-in.
"""

from __future__ import annotations

import argparse
from typing import Any

from corpus.cli.common import CliError
from corpus.cli.parsing import bounded_int

DEFAULT_PORT = 7071


def gallery_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/gallery"


def is_served(url: str, timeout: float = 3.0) -> bool:
    """True if ``url`` answers as the gallery does (any HTTP status but 404 from a server)."""
    # Imported here, not at the top: every command builds this command's parser, and these two
    # pull in http.client, email, ssl and mimetypes (~8 MB of start RSS, ~40 ms) for one command.
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:  # noqa: S310 - a loopback http URL we built
            return bool(res.status < 400)
    except urllib.error.HTTPError as err:
        return err.code != 404
    except OSError:
        return False


def cmd_gallery(args: argparse.Namespace) -> int:
    url = gallery_url(args.port)
    if not is_served(url):
        raise CliError(
            f"nothing serves the gallery at {url}: start the app with `corpus host` "
            f"(add --port {args.port} unless it is {DEFAULT_PORT}) and run this again"
        )
    print(url)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return 0


def add_parsers(sub: Any) -> None:
    g = sub.add_parser("gallery", help="print (or --open) the URL of the gallery served by a running `corpus host`")
    g.add_argument(
        "--port", type=bounded_int(1, 65535), default=DEFAULT_PORT, help=f"the host's HTTP port (default {DEFAULT_PORT})"
    )
    g.add_argument("--open", action="store_true", help="open it in the default web browser")
    g.set_defaults(func=cmd_gallery)
