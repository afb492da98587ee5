"""`python -m searchsvc.retrieve.build_models KIND NAME OPTIONS`: load one model as a server would (KIND
"embedder" or "cross-encoder", OPTIONS the ModelRegistry's settings as JSON), which makes the ONNX exports,
int8 copies and OpenVINO conversions it lacks, then exit. A server's ModelRegistry runs it when a model's files
are missing (ModelRegistry._load), so that torch and transformers are imported by this short-lived process, not
by the server."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    kind, name, options = argv[0], argv[1], json.loads(argv[2])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from searchsvc.retrieve.models import ModelRegistry

    for key in ("models_dir", "cache_dir"):
        options[key] = Path(options[key]) if options.get(key) else None
    registry = ModelRegistry(**options)
    if kind == "embedder":
        registry.embedder(name)
    elif kind == "cross-encoder":
        registry.cross_encoder(name)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
