"""Tests for the public surface: telemetry_guard.__all__ matches what __init__.py exports."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import telemetry_guard


def names_bound_in_init() -> set[str]:
    """Names that telemetry_guard/__init__.py binds by import or assignment (not __future__)."""
    tree = ast.parse(Path(telemetry_guard.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def test_all_is_sorted_without_duplicates() -> None:
    """__all__ is in sorted order and names each member once."""
    assert telemetry_guard.__all__ == sorted(telemetry_guard.__all__)
    assert len(set(telemetry_guard.__all__)) == len(telemetry_guard.__all__)


def test_every_name_in_all_is_importable_from_the_package() -> None:
    """`from telemetry_guard import <name>` works for every name in __all__."""
    module = importlib.import_module("telemetry_guard")
    for name in telemetry_guard.__all__:
        namespace: dict[str, object] = {}
        exec(f"from telemetry_guard import {name}", namespace)
        assert namespace[name] is getattr(module, name)


def test_every_public_name_bound_in_init_is_in_all() -> None:
    """Each non-underscore, non-submodule name bound in __init__.py is listed in __all__."""
    public = {
        name for name in names_bound_in_init()
        if not name.startswith("_")
        and not isinstance(getattr(telemetry_guard, name, None), types.ModuleType)
    }
    assert public == set(telemetry_guard.__all__)


def test_no_public_attribute_of_the_package_is_left_out_of_all() -> None:
    """Every public attribute of the package is in __all__, a submodule or the __future__ flag."""
    left_out = {
        name for name, value in vars(telemetry_guard).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # `from __future__ import annotations`
    } - set(telemetry_guard.__all__)
    assert left_out == set()


def test_the_design_cards_public_names_are_exported() -> None:
    """The names the design card promises to users are in __all__."""
    promised = {"TelemetryGuard", "GuardedTask", "RetryPolicy", "Severity", "classify",
                "Classifier", "CircuitOpenError"}
    assert promised <= set(telemetry_guard.__all__)
