"""The command line, one module per command group; `searchsvc` (the console script) is `main`."""

from searchsvc.cli.main import main

__all__ = ["main"]
