"""The commands that run on every launch or in tight CI loops, `run` and `verify`, parsed
without typer: importing typer (and the pydantic it pulls in) costs ~100 ms, more than the
check itself. `cli.py` shows their help; `__main__` sends everything else to typer."""

from __future__ import annotations

import os

from .errors import UsageError, report
from .launch import (
    RUN_USAGE,
    VERIFY_FLAGS,
    VERIFY_USAGE,
    Args,
    launch,
    parse,
    verify_and_report,
)
from .layout import resolve_pointer

DOCKER = "docker://"     # an image in the engine at $DOCKER_HOST: checked in a container


def run_main(args: list[str]) -> int:
    """`envbuild run ENV [--level L] [--expect D] [--] CMD ARGS...`: CMD's status, or the
    code of the reason it did not start (125, 126, 127)."""
    try:
        opts = parse(args, RUN_USAGE, want_env=True, want_cmd=True)
        if str(opts.env).startswith(DOCKER):
            from .imagerun import run_image

            return run_image(str(opts.env)[len(DOCKER):], opts)
        return launch(staged(str(opts.env), opts), opts.cmd, level=opts.level,
                      expect=opts.expect)
    except Exception as exc:  # noqa: BLE001 - every failure of ours refuses, never 1
        return report(exc, "envbuild run", launch=True)


def verify_main(args: list[str]) -> int:
    """`envbuild verify ...`: 0 match, 1 mismatch, 2 not an env or bad input (or a failure
    of verify itself: never 1, which reads as "differs")."""
    try:
        opts = parse(args, VERIFY_USAGE, want_env=True, want_cmd=False, flags=VERIFY_FLAGS)
        if str(opts.env).startswith(DOCKER):
            from .imagerun import verify_image

            return verify_image(str(opts.env)[len(DOCKER):], opts)
    except Exception as exc:  # noqa: BLE001
        return report(exc, "envbuild verify")
    return verify_and_report(resolve_pointer(str(opts.env))[0], opts, "envbuild verify")


def staged(env: str, opts: Args) -> str:
    """The env a launch runs from: a staged pointer resolved once, fresh, to its current
    version (materialized on node-local disk with --local or $ENVBUILD_LOCAL, and leased
    for gc); anything else as it is."""
    version_dir, root = resolve_pointer(env)
    if root is None:
        if opts.local:
            raise UsageError(f"--local: expected a staged pointer (ROOT/NAME), found {env}",
                             RUN_USAGE)
        return version_dir
    from .materialize import cache_dir
    from .stage import lease

    version = os.path.basename(version_dir)
    lease(root, version)
    cache = cache_dir(opts.local)
    if cache is None:
        return version_dir
    from .materialize import materialize

    return materialize(root, version, cache, opts.max_readers)
