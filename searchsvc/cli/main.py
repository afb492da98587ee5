"""Command line: `searchsvc serve | index | import | search | answer | collections | documents | export | alias |
snapshot | repair | move-to-qdrant | eval | eval-answers | train-embedder | bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from searchsvc.cli.collections import add_collection_commands
from searchsvc.cli.data import add_data_commands
from searchsvc.cli.index import add_index_commands
from searchsvc.cli.lab import add_lab_commands
from searchsvc.cli.search import add_search_commands
from searchsvc.cli.server import add_maintenance_commands, add_serve_command
from searchsvc.config import apply_process_env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="searchsvc", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (same keys as SEARCHSVC_* variables)")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_command(sub)
    add_index_commands(sub)
    add_search_commands(sub)
    add_collection_commands(sub)
    add_data_commands(sub)
    add_maintenance_commands(sub)
    add_lab_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_process_env()
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
