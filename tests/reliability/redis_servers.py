"""redis-servers the fault matrix breaks: plain ones, and a persistent one for the broker."""

from __future__ import annotations

import subprocess
import tempfile

import redis

from tests.servers import RedisServer, free_port, start_redis, wait_for


class PersistentRedisServer(RedisServer):
    """A redis-server that keeps its data across ``stop``/``restart`` (AOF, fsync always).

    A broker that loses its queues on restart loses tasks whatever the worker does; a
    production broker persists them, and so does this one.
    """

    def restart(self) -> None:
        self.process = _spawn_persistent(self.port, self.workdir)
        _wait_ready(self.port, self.process)


def start_private_redis(*, persistent: bool = False) -> RedisServer:
    """A redis-server of its own on a free port (``persistent``: AOF with fsync always)."""
    if not persistent:
        return start_redis()
    workdir = tempfile.mkdtemp(prefix="tg-rel-redis-")
    port = free_port()
    process = _spawn_persistent(port, workdir)
    _wait_ready(port, process)
    return PersistentRedisServer(port, process, workdir)


def _spawn_persistent(port: int, workdir: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "always", "--dir", workdir,
         "--databases", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, timeout=10)
    finally:
        client.close()
