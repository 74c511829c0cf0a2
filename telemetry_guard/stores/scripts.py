"""The package's Lua scripts: resource files under ``stores/lua``, read once per process.

A script is bound to a client with :func:`bind`, once per client: redis-py's ``Script``
then runs it by ``EVALSHA`` and loads it (``SCRIPT LOAD``) only when the server does not
know it yet.
"""

from __future__ import annotations

import threading
import weakref
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

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
