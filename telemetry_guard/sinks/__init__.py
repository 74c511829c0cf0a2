"""Sinks: one module per destination, all behind the ``Sink`` interface."""

from __future__ import annotations

from .base import Sink

__all__ = ["Sink"]
