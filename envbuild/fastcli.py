"""The commands that run on every launch or in tight CI loops, `run` and `verify`, parsed
without typer: importing typer (and the pydantic it pulls in) costs ~100 ms, more than the
check itself. `cli.py` shows their help; `__main__` sends everything else to typer."""

from __future__ import annotations

from .errors import report
from .launch import RUN_USAGE, VERIFY_USAGE, launch, parse, verify_and_report

DOCKER = "docker://"     # an image in the engine at $DOCKER_HOST: checked in a container


def run_main(args: list[str]) -> int:
    """`envbuild run ENV [--level L] [--expect D] [--] CMD ARGS...`: CMD's status, or the
    code of the reason it did not start (125, 126, 127)."""
    try:
        opts = parse(args, RUN_USAGE, want_env=True, want_cmd=True)
        if str(opts.env).startswith(DOCKER):
            from .imagerun import run_image

            return run_image(str(opts.env)[len(DOCKER):], opts)
        return launch(str(opts.env), opts.cmd, level=opts.level, expect=opts.expect)
    except Exception as exc:  # noqa: BLE001 - every failure of ours refuses, never 1
        return report(exc, "envbuild run", launch=True)


def verify_main(args: list[str]) -> int:
    """`envbuild verify ...`: 0 match, 1 mismatch, 2 not an env or bad input (or a failure
    of verify itself: never 1, which reads as "differs")."""
    try:
        opts = parse(args, VERIFY_USAGE, want_env=True, want_cmd=False, flags=("--json",))
        if str(opts.env).startswith(DOCKER):
            from .imagerun import verify_image

            return verify_image(str(opts.env)[len(DOCKER):], opts)
    except Exception as exc:  # noqa: BLE001
        return report(exc, "envbuild verify")
    return verify_and_report(str(opts.env), opts, "envbuild verify")
