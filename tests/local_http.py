"""A threaded HTTP server on a free loopback port, serving in a daemon thread (for the tests'
recording endpoints)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_in_thread(handler: type[BaseHTTPRequestHandler], name: str) -> ThreadingHTTPServer:
    """Start ``handler`` on 127.0.0.1 and a free port; ``server_address[1]`` is the port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name=name, daemon=True).start()
    return httpd
