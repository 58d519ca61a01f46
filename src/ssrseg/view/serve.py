"""``ssrseg view --serve``: the site over HTTP on 127.0.0.1 with the standard library (for a
machine reached over ssh: the printed ``ssh -L`` line forwards the port)."""

from __future__ import annotations

import functools
import getpass
import socket
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # never on a public interface: the site may show private data


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves the site folder without a log line per file."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_server(site: Path, port: int) -> ThreadingHTTPServer:
    """A server of ``site`` on 127.0.0.1:``port`` (0: a free port), not yet serving."""
    handler = functools.partial(QuietHandler, directory=str(site))
    return ThreadingHTTPServer((HOST, port), handler)


def addresses(port: int) -> tuple[str, str]:
    """(local URL, the ssh port-forward line to run on one's own machine)."""
    url = f"http://{HOST}:{port}/index.html"
    forward = f"ssh -N -L {port}:{HOST}:{port} {getpass.getuser()}@{socket.gethostname()}"
    return url, forward


def serve(site: Path, port: int) -> None:
    """Serve until Ctrl-C, after printing the address and the ssh line."""
    server = make_server(site, port)
    url, forward = addresses(server.server_address[1])
    print(f"serving {site} at {url}")
    print(f"from another machine: {forward}  (then open {url})")
    print("Ctrl-C stops it")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
