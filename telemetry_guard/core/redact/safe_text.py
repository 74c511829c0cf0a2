"""Text of any object that never raises, and cutting text to a length with a marker."""

from __future__ import annotations

from .markers import TRUNCATED_MARKER


def truncate(text: str, limit: int, total: int | None = None) -> str:
    """Cut ``text`` to ``limit`` chars plus the marker; ``total`` is its length before any cut."""
    total = len(text) if total is None else total
    return text if total <= limit else text[:limit] + TRUNCATED_MARKER.format(n=total - limit)


def type_name(obj: object) -> str:
    """The name of ``obj``'s type, or ``"object"`` if even that fails."""
    try:
        return str(type(obj).__name__)
    except Exception:
        return "object"


def raw_text(obj: object, use_str: bool = False) -> str:
    """``repr(obj)`` (or ``str(obj)``) as an exact str, or a marker naming the type."""
    try:
        return str.__str__(str(obj) if use_str else repr(obj))
    except Exception:
        return f"<{'unprintable' if use_str else 'unrepresentable'} {type_name(obj)}>"


def safe_repr(obj: object, limit: int = 2048) -> str:
    """``repr(obj)`` cut to ``limit`` chars; ``"<unrepresentable TypeName>"`` if it raises."""
    return truncate(raw_text(obj), max(limit, 0))


def exception_message(exc: BaseException, limit: int = 2048) -> str:
    """``str(exc)`` cut to ``limit`` chars; ``"<unprintable TypeName>"`` if it raises."""
    return truncate(raw_text(exc, True), max(limit, 0))
