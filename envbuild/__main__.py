"""`envbuild` entry point. `run` and `verify` are dispatched before typer is imported:
they sit on every launch and in CI loops, and must cost milliseconds, not the ~100 ms
typer and rich take to import; so is a plain `build` (a cache hit in a CI loop)."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    fast = args[0] if args and args[0] in ("run", "verify") else None
    if fast and not {"-h", "--help"} & set(args[1:] if fast == "verify" else args[1:2]):
        from . import fastcli

        command = fastcli.run_main if fast == "run" else fastcli.verify_main
        code = command(args[1:])
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)
    if args[:1] == ["build"]:   # a CI loop's cache hit: no typer when it is not needed
        from .fastbuild import build_main

        built = build_main(args[1:])
        if built is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            raise SystemExit(built)
    from .cli import app

    app()


if __name__ == "__main__":
    main()
