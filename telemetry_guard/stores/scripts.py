"""The package's Lua scripts: resource files under ``stores/lua``, read once per process.

A script is bound to a client with :func:`bind`, once per client: redis-py's ``Script``
then runs it by ``EVALSHA`` and loads it (``SCRIPT LOAD``) only when the server does not
know it yet.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from .redis_client import is_cluster

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script


@cache
def lua(name: str) -> str:
    """The text of ``telemetry_guard/stores/lua/<name>.lua``."""
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text("utf-8")


_lock = threading.Lock()
_bound: weakref.WeakKeyDictionary[redis.Redis, dict[str, Script]] = (
    weakref.WeakKeyDictionary())


def bind(client: redis.Redis, name: str) -> Script:
    """The script ``name`` bound to ``client`` (called as ``script(keys=..., args=...)``),
    made once per client: every caller of a client shares it."""
    with _lock:
        scripts = _bound.get(client)
        if scripts is None:
            scripts = _bound[client] = {}
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = client.register_script(lua(name))
        return script


#: One script call of a batch: the bound script, its keys and its arguments.
ScriptCall = tuple["Script", Sequence[Any], Sequence[Any]]


def run_batch(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    """Script calls in one pipelined round trip (per cluster node): each call's reply, or its
    error, in order.

    Calls go by ``EVALSHA`` alone. One the server answers ``NOSCRIPT`` (a cluster node or a
    promoted replica that never loaded it, a restarted server) did not run: its script is
    loaded (``SCRIPT LOAD``) and the call sent again. On a Redis Cluster, calls are grouped
    by the node that serves their first key's slot, each group one pipeline to its node; a
    call answered ``MOVED``/``ASK`` (a slot migrating) is sent again through the cluster
    client, which follows the redirection. A lost connection raises, as any command's would.
    """
    if not is_cluster(client):
        return _run_on(client, calls)
    from redis.exceptions import AskError, ConnectionError, MovedError, TimeoutError

    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, (_, keys, _) in enumerate(calls):
        node = client.get_node_from_key(keys[0])
        groups.setdefault(node.name, (node, []))[1].append(i)
    replies: list[Any] = [None] * len(calls)
    for node, indexes in groups.values():
        try:
            answered = _run_on(client.get_redis_connection(node), [calls[i] for i in indexes])
        except (ConnectionError, TimeoutError):
            _refresh_slots(client)  # a master may have failed over: ask the cluster again
            raise
        for i, reply in zip(indexes, answered, strict=True):
            replies[i] = reply
    for i, reply in enumerate(replies):
        if isinstance(reply, (MovedError, AskError)):
            script, keys, args = calls[i]
            try:
                replies[i] = script(keys=keys, args=args)
            except Exception as exc:
                replies[i] = exc
    return replies


def _refresh_slots(client: Any) -> None:
    """Re-read which node serves which slot (the cluster client does so on its own errors,
    not on those of the node pipelines sent here)."""
    try:
        client.nodes_manager.initialize()
    except Exception:
        pass  # the cluster is unreachable: the next batch tries again


def _run_on(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    """``calls`` in one pipeline to one server, loading the scripts it lacks."""
    from redis.exceptions import NoScriptError

    replies = _send(client, calls)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        scripts = {id(calls[i][0]): calls[i][0] for i in missing}
        try:
            for script in scripts.values():
                script.sha = client.script_load(script.script)
        except Exception as exc:  # scripts refused (an ACL): the calls stay failed
            for i in missing:
                replies[i] = exc
            return replies
        for i, reply in zip(missing, _send(client, [calls[i] for i in missing]), strict=True):
            replies[i] = reply
    return replies


def _send(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(pipe.execute(raise_on_error=False))
