"""Cheap, bounded traceback text for failure events.

The standard library's formatter compiles every source line to place carets
and stats every file; on a failing task that costs more than the rest of the
failure path. This one prints the classic layout, keeps the last frames of
each exception in the chain, and passes every piece of text it prints —
exception messages, notes (``add_note``) and source lines (code holds literal
URLs and keys too) — through ``scrub``, one piece at a time, before anyone cuts
the result: the guard passes ``Redactor.redact_text``, the scrubber of every
text it reports.
"""

from __future__ import annotations

import collections
import functools
import linecache
import sys
from collections.abc import Callable

from .redact import Redactor, exception_message

#: Frames kept from the end of each exception's traceback.
MAX_FRAMES = 30
#: Notes (``add_note``) printed per exception.
MAX_NOTES = 10
#: Exceptions followed along ``__cause__`` / ``__context__``.
MAX_CHAIN = 5

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


@functools.cache
def _default_scrub() -> Callable[[str], str]:
    return Redactor().redact_text


@functools.lru_cache(maxsize=4096)
def _scrub_source(line: str, scrub: Callable[[str], str]) -> str:
    """A source line scrubbed; code does not change, so each is scrubbed once per scrubber."""
    return scrub(line)


def format_traceback(exc: BaseException, scrub: Callable[[str], str] | None = None,
                     *, max_frames: int = MAX_FRAMES, max_chain: int = MAX_CHAIN) -> str:
    """The traceback of ``exc`` and its causes, oldest first, scrubbed; never raises.

    ``scrub`` defaults to a default :class:`Redactor`'s ``redact_text``.
    """
    scrub = scrub or _default_scrub()
    try:
        chain: list[tuple[BaseException, str]] = []
        seen: set[int] = set()
        current: BaseException | None = exc
        link = ""
        while current is not None and id(current) not in seen and len(chain) < max_chain:
            seen.add(id(current))
            chain.append((current, link))
            if current.__cause__ is not None:
                current, link = current.__cause__, _CAUSE
            elif current.__context__ is not None and not current.__suppress_context__:
                current, link = current.__context__, _CONTEXT
            else:
                current = None
        parts: list[str] = []
        for error, link in reversed(chain):
            parts.extend(_format_one(error, scrub, max_frames))
            parts.append(link)
        return "".join(parts)
    except Exception:
        return f"{type(exc).__name__}: <traceback unavailable>\n"


def _format_one(exc: BaseException, scrub: Callable[[str], str], max_frames: int) -> list[str]:
    parts: list[str] = []
    frames: collections.deque[tuple[str, int, str]] = collections.deque(maxlen=max_frames)
    total = 0
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, tb.tb_lineno, code.co_name))
        total += 1
        tb = tb.tb_next
    if frames:
        parts.append("Traceback (most recent call last):\n")
        if total > len(frames):
            parts.append(f"  [{total - len(frames)} earlier frames omitted]\n")
        for filename, lineno, name in frames:
            parts.append(f'  File "{filename}", line {lineno}, in {name}\n')
            line = linecache.getline(filename, lineno).strip()
            if line:
                parts.append(f"    {_scrub_source(line, scrub)}\n")
    message = scrub(exception_message(exc, sys.maxsize))
    kind = type(exc)
    module = kind.__module__
    qualname = kind.__qualname__ if module in ("builtins", "__main__") else (
        f"{module}.{kind.__qualname__}")
    parts.append(f"{qualname}: {message}\n" if message else f"{qualname}\n")
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        parts.extend(f"{scrub(note if isinstance(note, str) else repr(note))}\n"
                     for note in notes[:MAX_NOTES])
    return parts
