"""`envbuild` entry point. `run` and `verify` are dispatched before typer is imported:
they sit on every launch and in CI loops, and must cost milliseconds, not the ~100 ms
typer and rich take to import; so are a plain `build` (a cache hit in a CI loop) and a
plain `lock` (whose overhead over uv's resolution was mostly typer's import)."""

from __future__ import annotations

import os
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
    if next((arg for arg in args if not arg.startswith("-")), None) == "run":
        _dispatch(args)   # (after global options) CMD gets SIGCHLD as envbuild got it
        return
    from .children import DefaultSigchld

    # every other command waits for the tools and children it starts: where SIGCHLD comes
    # ignored from the parent, the kernel would reap them unseen and a failing pip would
    # read as exit 0
    with DefaultSigchld(only_if_ignored=True):
        _dispatch(args)


def _dispatch(args: list[str]) -> None:
    if args[:1] in (["build"], ["lock"]):   # no typer when it is not needed
        build = args[0] == "build"
        if build:
            import gc  # here: not on `run`'s and `verify`'s path

            # a build is a process of a second or so whose garbage is acyclic: the cycle
            # collector's passes over the records and imports (and, in each child forked
            # to install wheels, over every inherited object, copying the pages it
            # touches) cost a rebuild about 7% of its time and free nothing that matters
            # (jupyter-stack's build peaks at the same 48 MB without them)
            gc.disable()
        from .fastbuild import build_main, lock_main

        done = (build_main if build else lock_main)(args[1:])
        if done is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            if build:
                # the build is done with every file, child process and lock, and logs to
                # stderr alone: what Python's exit would add (a last full collection and
                # the teardown of every module) cost a rebuild about 6% of its time
                os._exit(done)
            raise SystemExit(done)
    from .cli import app

    app()


if __name__ == "__main__":
    main()
