"""`envbuild` entry point. `run` is dispatched before typer is imported: it sits on every
launch and must cost milliseconds, not the ~100 ms typer and rich take to import."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["run"] and not {"-h", "--help"} & set(args[1:2]):
        from .launch import run_main

        sys.stdout.flush()
        code = run_main(args[1:])
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(code)
    from .cli import app

    app()


if __name__ == "__main__":
    main()
