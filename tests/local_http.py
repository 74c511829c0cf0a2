"""The tests' recording HTTP endpoints: a threaded server on a free loopback port in a daemon
thread, and the request bodies as they were before the transport compressed them."""

from __future__ import annotations

import gzip
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_in_thread(handler: type[BaseHTTPRequestHandler], name: str) -> ThreadingHTTPServer:
    """Start ``handler`` on 127.0.0.1 and a free port; ``server_address[1]`` is the port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name=name, daemon=True).start()
    return httpd


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """Undo the transport's ``Content-Encoding``."""
    encoding = (encoding or "").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]

        return bytes(brotli.decompress(body))
    return body
