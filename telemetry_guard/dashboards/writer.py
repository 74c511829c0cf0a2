"""Writing the dashboards as ``<uid>.json`` files, checking them, and the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .catalog import dashboards
from .grafana import Json


def render(board: Json) -> str:
    """The file text of one dashboard: pretty JSON, sorted keys, trailing newline."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(out: Path) -> list[Path]:
    """Writes every dashboard to ``out/<uid>.json``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for board in dashboards():
        path = out / f"{board['uid']}.json"
        path.write_text(render(board), encoding="utf-8")
        paths.append(path)
    return paths


def stale(out: Path) -> list[Path]:
    """Files under ``out`` that are missing or differ from what :func:`write` would write."""
    outdated = []
    for board in dashboards():
        path = out / f"{board['uid']}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != render(board):
            outdated.append(path)
    return outdated


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate the dashboards, or check that they are up to date."""
    parser = argparse.ArgumentParser(
        prog="python -m telemetry_guard.dashboards",
        description="Write the telemetry_guard Grafana dashboards as JSON files.")
    parser.add_argument("--out", type=Path, default=Path("dashboards"),
                        help="directory to write <uid>.json files into (default: dashboards)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file is missing or out of date")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(args.out)
        for path in outdated:
            print(f"out of date: {path}", file=sys.stderr)
        return 1 if outdated else 0
    for path in write(args.out):
        print(path)
    return 0
