"""Private Redis servers in the shapes production runs: TLS, ACL, unix socket, Sentinel,
Cluster.

Every topology is started from the one ``redis-server`` binary on free ports, in a temp
dir of its own, and offers ``url`` and ``options`` (what a user would put in
``telemetry_guard_redis_url`` and ``telemetry_guard_redis_options``), ``client()`` (a
plain redis-py client for assertions) and ``stop()`` (every process killed, the dir
removed). A start that fails half way kills what it started and raises ``RuntimeError``.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from tests.servers import free_port, wait_for

#: Password of the ``default`` user of the ACL server (the test's own client).
ADMIN_PASSWORD = "admin"
#: The restricted ACL user a user would configure the guard with.
GUARD_USER = "guard"
GUARD_PASSWORD = "guard-secret"
#: What the guard's ACL user may do: its own keys (plain and hash-tagged), no dangerous command.
GUARD_ACL_RULES = (
    "on", f">{GUARD_PASSWORD}", "resetkeys", "~telemetry_guard:*", "~{telemetry_guard:*",
    "resetchannels", "+@all", "-@dangerous", "+info", "+ping", "+script|load", "+script|exists",
)
#: Ports for cluster nodes: the bus port (port + 10000) must stay below 65536 too.
CLUSTER_PORT_RANGE = (20000, 45000)

_BASE_ARGS = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
#: A replica's full sync starts at once (the default waits 5 s for more replicas to join).
_REPLICATION_ARGS = ("--repl-diskless-sync-delay", "0")


class _Processes:
    """The processes and the temp dir one topology owns; ``stop`` ends them all."""

    def __init__(self, prefix: str) -> None:
        self.workdir = tempfile.mkdtemp(prefix=prefix)
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def spawn(self, name: str, args: list[str]) -> None:
        """Start ``args`` as process ``name``; its output goes to ``<workdir>/<name>.log``."""
        with open(self.path(f"{name}.log"), "ab") as log:
            self.running[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def log_tail(self, name: str, lines: int = 12) -> str:
        try:
            with open(self.path(f"{name}.log"), errors="replace") as log:
                return "".join(log.readlines()[-lines:]).strip()
        except OSError:
            return ""

    def check_alive(self, name: str, hint: str = "") -> None:
        """Raise a ``RuntimeError`` with the process's last output if it has exited."""
        process = self.running[name]
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode}{hint}; "
                f"its last output:\n{self.log_tail(name)}")

    def kill(self, name: str) -> None:
        """SIGKILL process ``name`` (no clean shutdown: a crash) and reap it."""
        process = self.running[name]
        if process.poll() is None:
            process.kill()
        process.wait()

    def stop(self) -> None:
        for name in list(self.running):
            self.kill(name)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def _stopped_on_failure(processes: _Processes) -> Iterator[None]:
    """Kill everything started so far and remove the dir when the start fails half way."""
    try:
        yield
    except BaseException:
        processes.stop()
        raise


def _require(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed (needed for this Redis topology)")


def _wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """``wait_for``, failing with a ``RuntimeError`` that says what did not happen."""
    try:
        return wait_for(predicate, timeout=timeout)
    except AssertionError:
        raise RuntimeError(f"{what} not within {timeout} s") from None


def _wait_answers(processes: _Processes, name: str, client: redis.Redis, hint: str = "",
                  timeout: float = 10.0) -> None:
    """Wait until process ``name`` answers PING through ``client``; fail if it exits first."""

    def answers() -> bool:
        processes.check_alive(name, hint)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    try:
        _wait_until(answers, f"{name} answering PING", timeout)
    finally:
        client.close()


def _address(reply: Any) -> tuple[str, int] | None:
    """``(host, port)`` from a sentinel's GET-MASTER-ADDR-BY-NAME reply (bytes or str)."""
    if not reply:
        return None
    host, port = reply
    return (host.decode() if isinstance(host, bytes) else str(host)), int(port)


def _no_retry() -> Retry:
    """Probes fail at once: redis-py's default retries back off for seconds on a refusal."""
    return Retry(NoBackoff(), 0)


def _local(port: int, **options: Any) -> redis.Redis:
    """A probe of a local server: short timeouts, no retries."""
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5,
                       socket_timeout=2, retry=_no_retry(), **options)


# --- TLS ------------------------------------------------------------------------------


@dataclass
class TlsRedis:
    """A redis-server that speaks only TLS and requires a client certificate."""

    port: int
    ca_cert: str
    client_cert: str
    client_key: str
    processes: _Processes

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, Any]:
        return {"ssl_ca_certs": self.ca_cert, "ssl_certfile": self.client_cert,
                "ssl_keyfile": self.client_key, "ssl_cert_reqs": "required"}

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, **self.options)

    def stop(self) -> None:
        self.processes.stop()


def _openssl(processes: _Processes, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=processes.workdir,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _make_certificates(processes: _Processes) -> None:
    """A throwaway CA, and a server and a client certificate it signed (EC keys: fast)."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(processes, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=telemetry_guard test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    usages = {"server": "serverAuth", "client": "clientAuth"}
    for role, usage in usages.items():
        with open(processes.path(f"{role}.ext"), "w") as ext:
            ext.write("basicConstraints=CA:FALSE\n"
                      "keyUsage=critical,digitalSignature,keyEncipherment\n"
                      f"extendedKeyUsage={usage}\n"
                      "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
            if role == "server":
                ext.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl(processes, "req", "-new", *key, "-keyout", f"{role}.key", "-out", f"{role}.csr",
                 "-subj", f"/CN={'localhost' if role == 'server' else 'telemetry_guard'}")
        _openssl(processes, "x509", "-req", "-in", f"{role}.csr", "-CA", "ca.crt",
                 "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{role}.crt", "-days", "2",
                 "-extfile", f"{role}.ext")


def start_tls_redis() -> TlsRedis:
    """A redis-server on a TLS port only (no plain port), client certificates required."""
    _require("redis-server", "openssl")
    processes = _Processes("tg-tls-redis-")
    with _stopped_on_failure(processes):
        _make_certificates(processes)
        port = free_port()
        processes.spawn("redis-server", [
            "redis-server", *_BASE_ARGS, "--dir", processes.workdir, "--port", "0",
            "--tls-port", str(port), "--tls-cert-file", processes.path("server.crt"),
            "--tls-key-file", processes.path("server.key"),
            "--tls-ca-cert-file", processes.path("ca.crt"), "--tls-auth-clients", "yes"])
        server = TlsRedis(port, processes.path("ca.crt"), processes.path("client.crt"),
                          processes.path("client.key"), processes)
        client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, retry=_no_retry(),
                                      **server.options)
        _wait_answers(processes, "redis-server", client,
                      " (is redis-server built with TLS support, BUILD_TLS=yes?)")
        return server


# --- unix socket ----------------------------------------------------------------------


@dataclass
class UnixRedis:
    """A redis-server listening on a unix socket only (no TCP port)."""

    socket_path: str
    processes: _Processes

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=self.socket_path)

    def stop(self) -> None:
        self.processes.stop()


def start_unix_redis() -> UnixRedis:
    """A redis-server on ``<workdir>/redis.sock``, its TCP port off."""
    _require("redis-server")
    processes = _Processes("tg-unix-redis-")
    with _stopped_on_failure(processes):
        path = processes.path("redis.sock")
        processes.spawn("redis-server", [
            "redis-server", *_BASE_ARGS, "--dir", processes.workdir, "--port", "0",
            "--unixsocket", path, "--unixsocketperm", "700"])
        server = UnixRedis(path, processes)
        _wait_answers(processes, "redis-server",
                      redis.Redis(unix_socket_path=path, socket_connect_timeout=0.5,
                                  socket_timeout=2, retry=_no_retry()))
        return server


# --- ACL ------------------------------------------------------------------------------


@dataclass
class AclRedis:
    """A redis-server whose default user needs a password and whose guard user is restricted."""

    port: int
    processes: _Processes

    @property
    def url(self) -> str:
        return f"redis://{GUARD_USER}:{GUARD_PASSWORD}@127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def client(self) -> redis.Redis:
        """The admin (``default`` user): may do anything, for the test's own checks."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=ADMIN_PASSWORD)

    def stop(self) -> None:
        self.processes.stop()


def start_acl_redis() -> AclRedis:
    """A redis-server with a password on ``default`` and the restricted ``guard`` user."""
    _require("redis-server")
    processes = _Processes("tg-acl-redis-")
    with _stopped_on_failure(processes):
        port = free_port()
        with open(processes.path("redis.conf"), "w") as conf:
            conf.write(f"user default on >{ADMIN_PASSWORD} ~* &* +@all\n"
                       f"user {GUARD_USER} {' '.join(GUARD_ACL_RULES)}\n")
        processes.spawn("redis-server", [
            "redis-server", processes.path("redis.conf"), *_BASE_ARGS,
            "--dir", processes.workdir, "--port", str(port)])
        server = AclRedis(port, processes)
        _wait_answers(processes, "redis-server", _local(port, password=ADMIN_PASSWORD))
        return server


# --- Sentinel -------------------------------------------------------------------------


@dataclass
class SentinelGroup:
    """A master, one replica and three sentinels watching them (quorum 2)."""

    master_name: str
    sentinel_ports: list[int]
    processes: _Processes
    #: The port of each redis-server process (``master``, ``replica``), for kills.
    server_ports: dict[str, int]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)

    @property
    def options(self) -> dict[str, Any]:
        return {"master_name": self.master_name}

    def client(self) -> redis.Redis:
        """A plain client of the current master."""
        host, port = self.master_address()
        return redis.Redis(host=host, port=port)

    def master_address(self) -> tuple[str, int]:
        """The master's address as the first sentinel that answers reports it."""
        for port in self.sentinel_ports:
            try:
                with _local(port) as sentinel:
                    address = _address(
                        sentinel.sentinel_get_master_addr_by_name(self.master_name))
            except redis.RedisError:
                continue
            if address:
                return address
        raise RuntimeError(f"no sentinel knows a master named {self.master_name}")

    def kill_master(self) -> tuple[str, int]:
        """SIGKILL the current master's process; returns the address it had."""
        address = self.master_address()
        name = next(name for name, port in self.server_ports.items() if port == address[1])
        self.processes.kill(name)
        return address

    def wait_for_promotion(self, old_address: tuple[str, int],
                           timeout: float = 30.0) -> tuple[str, int]:
        """The new master's address, once every live sentinel reports it and it is master."""

        def promoted() -> tuple[str, int] | None:
            reported = set()
            for port in self.sentinel_ports:
                try:
                    with _local(port) as sentinel:
                        reported.add(_address(
                            sentinel.sentinel_get_master_addr_by_name(self.master_name)))
                except redis.RedisError:
                    return None
            if len(reported) != 1 or old_address in reported or None in reported:
                return None
            (address,) = reported
            try:
                with _local(address[1]) as candidate:
                    role = candidate.execute_command("ROLE")
            except redis.RedisError:
                return None
            return address if role[0] in (b"master", "master") else None

        return _wait_until(promoted, "a replica promoted by the sentinels", timeout)

    def stop(self) -> None:
        self.processes.stop()


def _sentinel_config(master_name: str, port: int, master_port: int, replica_port: int,
                     my_id: str, others: dict[int, str], workdir: str) -> str:
    """A sentinel's config that already knows the replica and the other sentinels.

    Sentinels would find each other through hello messages every 2 s; naming them here
    (``known-sentinel``, with ids fixed by ``myid``) makes the group ready at once.
    """
    lines = [
        f"port {port}", "bind 127.0.0.1", f"dir {workdir}", f"sentinel myid {my_id}",
        f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {master_name} 1000",
        f"sentinel failover-timeout {master_name} 5000",
        f"sentinel parallel-syncs {master_name} 1",
        f"sentinel known-replica {master_name} 127.0.0.1 {replica_port}",
        *(f"sentinel known-sentinel {master_name} 127.0.0.1 {other_port} {other_id}"
          for other_port, other_id in others.items()),
    ]
    return "\n".join(lines) + "\n"


def _sentinel_group_ready(group: SentinelGroup) -> bool:
    """Every sentinel knows the master, the replica (in sync) and both other sentinels."""
    master = ("127.0.0.1", group.server_ports["master"])
    for port in group.sentinel_ports:
        group.processes.check_alive(f"sentinel-{port}")
        sentinel = _local(port)
        try:
            address = sentinel.sentinel_get_master_addr_by_name(group.master_name)
            replicas = sentinel.sentinel_slaves(group.master_name)
            peers = sentinel.sentinel_sentinels(group.master_name)
        except redis.RedisError:
            return False
        finally:
            sentinel.close()
        if _address(address) != master:
            return False
        if [int(r["port"]) for r in replicas if _linked(r)
                and r.get("master-link-status") == "ok"] != [group.server_ports["replica"]]:
            return False
        if len([peer for peer in peers if _linked(peer)]) != 2:
            return False
    return True


def _linked(instance: dict[str, Any]) -> bool:
    return not (instance.get("is_disconnected") or instance.get("is_sdown"))


def _replica_in_sync(port: int) -> bool:
    with _local(port) as client:
        return client.info("replication").get("master_link_status") == "up"


def start_sentinel_group(master_name: str = "tg-master") -> SentinelGroup:
    """A master, a replica of it, and three sentinels that all know both and each other."""
    _require("redis-server")
    processes = _Processes("tg-sentinel-")
    with _stopped_on_failure(processes):
        master_port, replica_port = free_port(), free_port()
        for name, port, extra in (("master", master_port, []),
                                  ("replica", replica_port,
                                   ["--replicaof", "127.0.0.1", str(master_port)])):
            os.mkdir(processes.path(name))
            processes.spawn(name, ["redis-server", *_BASE_ARGS, *_REPLICATION_ARGS,
                                   "--dir", processes.path(name), "--port", str(port), *extra])
        _wait_answers(processes, "master", _local(master_port))
        _wait_answers(processes, "replica", _local(replica_port))
        _wait_until(lambda: _replica_in_sync(replica_port), "the replica in sync")

        sentinel_ports = [free_port() for _ in range(3)]
        ids = {port: secrets.token_hex(20) for port in sentinel_ports}
        for port in sentinel_ports:
            conf = processes.path(f"sentinel-{port}.conf")
            with open(conf, "w") as file:
                file.write(_sentinel_config(
                    master_name, port, master_port, replica_port, ids[port],
                    {other: ids[other] for other in sentinel_ports if other != port},
                    processes.workdir))
            processes.spawn(f"sentinel-{port}", ["redis-server", conf, "--sentinel"])
        group = SentinelGroup(master_name, sentinel_ports, processes,
                              {"master": master_port, "replica": replica_port})
        for port in sentinel_ports:
            _wait_answers(processes, f"sentinel-{port}", _local(port))
        _wait_until(lambda: _sentinel_group_ready(group),
                    "every sentinel knowing the master, the replica and the other sentinels")
        return group


# --- Cluster --------------------------------------------------------------------------


@dataclass
class RedisClusterNodes:
    """Masters of a Redis Cluster, the 16384 slots split between them, no replicas."""

    ports: list[int]
    processes: _Processes

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    @property
    def options(self) -> dict[str, Any]:
        return {"cluster": True}

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def stop(self) -> None:
        self.processes.stop()


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """``count`` ports free together with their bus ports (port + 10000), all distinct."""
    chooser = random.SystemRandom()
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(1000):
        port = chooser.randrange(*CLUSTER_PORT_RANGE)
        if {port, port + 10000} & taken or not (_bindable(port) and _bindable(port + 10000)):
            continue
        chosen.append(port)
        taken |= {port, port + 10000}
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"no {count} free port pairs in {CLUSTER_PORT_RANGE}")


def _cluster_state_ok(port: int) -> bool:
    with _local(port) as client:
        try:
            info = client.execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


def keys_on_each_node(cluster: redis.cluster.RedisCluster) -> dict[str, str]:
    """One key per master (its ``host:port``), found by the key's hash slot."""
    found: dict[str, str] = {}
    masters = {node.name for node in cluster.get_primaries()}
    for number in range(100_000):
        key = f"telemetry_guard:slot-probe:{number}"
        owner = cluster.nodes_manager.get_node_from_slot(key_slot(key.encode())).name
        found.setdefault(owner, key)
        if set(found) == masters:
            return found
    raise RuntimeError("no key found for every master")


def _cluster_serves_every_node(nodes: RedisClusterNodes) -> bool:
    try:
        with nodes.client() as cluster:
            for owner, key in keys_on_each_node(cluster).items():
                cluster.set(key, owner)
                if cluster.get(key) != owner.encode():
                    return False
    except redis.RedisError:
        return False
    return True


def start_cluster(masters: int = 3) -> RedisClusterNodes:
    """``masters`` cluster nodes joined by ``redis-cli --cluster create``, all slots served."""
    _require("redis-server", "redis-cli")
    processes = _Processes("tg-cluster-")
    with _stopped_on_failure(processes):
        ports = cluster_ports(masters)
        for port in ports:
            os.mkdir(processes.path(str(port)))
            processes.spawn(f"node-{port}", [
                "redis-server", *_BASE_ARGS, "--dir", processes.path(str(port)),
                "--port", str(port), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"])
        for port in ports:
            _wait_answers(processes, f"node-{port}", _local(port),
                          " (is redis-server built with cluster support?)")
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout[-2000:]}"
                               f"{create.stderr[-2000:]}")
        nodes = RedisClusterNodes(ports, processes)
        for port in ports:
            _wait_until(lambda port=port: _cluster_state_ok(port),
                        f"cluster_state:ok on node {port}")
        _wait_until(lambda: _cluster_serves_every_node(nodes),
                    "SET/GET through a cluster client on every master")
        return nodes
