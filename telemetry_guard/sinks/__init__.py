"""Sinks: one module per destination, all behind the ``Sink`` interface."""

from __future__ import annotations

from ..core.sink import Sink

__all__ = ["Sink"]
