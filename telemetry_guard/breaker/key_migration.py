"""Moving breaker state from the key layout before 0.2 to the hash-tagged one.

Before 0.2 a breaker lived in ``<prefix>breaker:<name>`` (and ``:permits``, ``:window``); now
in ``<prefix>breaker:{<name>}``, so that one script's keys share a Redis Cluster slot. Each
old key is copied with DUMP and RESTORE (its time to live kept), then deleted: this works on
one server and across the slots of a cluster. A breaker that already has state under the new
layout keeps it; its old keys are only deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..stores.keys import glob_escape
from .redis_hash import breaker_keys, legacy_breaker_keys

#: Keys per SCAN step.
SCAN_COUNT = 500


@dataclass
class Migration:
    """What a migration found and did, by breaker name."""

    moved: list[str] = field(default_factory=list)
    kept_newer: list[str] = field(default_factory=list)
    #: Names that cannot be a hash tag (starting with ``}``): left where they are.
    unmovable: list[str] = field(default_factory=list)


def legacy_breaker_names(client: Any, key_prefix: str) -> list[str]:
    """Breakers whose hash is still in the old layout (on every master of a cluster)."""
    base = f"{key_prefix}breaker:"
    pattern = glob_escape(base) + "*"
    names = set()
    candidates = []
    for raw in client.scan_iter(match=pattern, count=SCAN_COUNT):
        key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        rest = key[len(base):]
        if rest and not rest.startswith("{") and not rest.endswith((":permits", ":window")):
            candidates.append(key)
    if candidates:
        pipe = client.pipeline(transaction=False)
        for key in candidates:
            pipe.type(key)
        for key, kind in zip(candidates, pipe.execute(), strict=True):
            if kind in (b"hash", "hash"):
                names.add(key[len(base):])
    return sorted(names)


def migrate_breaker_keys(client: Any, key_prefix: str) -> Migration:
    """Move every old-layout breaker to the new layout; see the module's docstring."""
    done = Migration()
    for name in legacy_breaker_names(client, key_prefix):
        old = legacy_breaker_keys(key_prefix, name)
        try:
            new = [k.decode() for k in breaker_keys(key_prefix, name)]
        except ValueError:
            done.unmovable.append(name)
            continue
        if client.exists(new[0]):
            done.kept_newer.append(name)
        else:
            for old_key, new_key in zip(old, new, strict=True):
                dumped = client.dump(old_key)
                if dumped is None:
                    continue
                ttl = client.pttl(old_key)
                client.restore(new_key, max(ttl, 0), dumped, replace=True)
            done.moved.append(name)
        for key in old:  # one by one: in a cluster they live in different slots
            client.delete(key)
    return done
