"""The builder stage's entry (`Dockerfile.template`): inside the base image, build the env by
the same code as a venv build, offline, from the wheel cache that came in the build
context, by the base's own interpreter; then move it to where the image keeps it.

Runs where only envbuild's build-side dependencies are installed (no typer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .build import build
from .errors import EnvbuildError, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envbuild.inimage")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--time", required=True, help="the provenance's fixed UTC time")
    args = parser.parse_args(argv)
    try:
        result = build(args.recipe, store_dir=args.store, python=args.python, offline=True,
                       progress=lambda message: print(f"envbuild: {message}", flush=True),
                       fixed_time=args.time, installer="pip")
        args.dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.rename(result.path, args.dest)
    except EnvbuildError as exc:
        return report(exc, "envbuild")
    print(json.dumps({**result.to_json(), "path": str(args.dest)}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
