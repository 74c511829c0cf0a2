"""A TCP proxy in front of a real server that can lose a reply: the command reaches the
server and runs, but the client's connection is closed before the answer gets back, as when
a master dies or a network drops between a write and its acknowledgement."""

from __future__ import annotations

import socket
import threading
from contextlib import suppress

from tests.servers import free_port


class LossyProxy:
    """Listens on ``port``; forwards to ``target_port``. ``lose_next_reply()`` arms it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.replies_lost = 0
        self._lose = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def lose_next_reply(self) -> None:
        """The next reply the server sends is dropped, and that client's connection closed."""
        self._lose.set()

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if replies and self._lose.is_set():
                    self._lose.clear()
                    self.replies_lost += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    end.close()
