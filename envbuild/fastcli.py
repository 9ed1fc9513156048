"""The commands that run on every launch or in tight CI loops, `run` and `verify`, parsed
without typer: importing typer (and the pydantic it pulls in) costs ~100 ms, more than the
check itself. `cli.py` shows their help; `__main__` sends everything else to typer."""

from __future__ import annotations

import sys

from .errors import report
from .launch import RUN_USAGE, VERIFY_USAGE, launch, parse
from .verify import verify


def run_main(args: list[str]) -> int:
    """`envbuild run ENV [--level L] [--expect D] [--] CMD ARGS...`: CMD's status, or the
    code of the reason it did not start (125, 126, 127)."""
    try:
        opts = parse(args, RUN_USAGE, want_env=True, want_cmd=True)
        return launch(str(opts.env), opts.cmd, level=opts.level, expect=opts.expect)
    except Exception as exc:  # noqa: BLE001 - every failure of ours refuses, never 1
        return report(exc, "envbuild run", launch=True)


def verify_main(args: list[str]) -> int:
    """`envbuild verify ...`: 0 match, 1 mismatch, 2 not an env or bad input (or a failure
    of verify itself: never 1, which reads as "differs")."""
    try:
        opts = parse(args, VERIFY_USAGE, want_env=True, want_cmd=False, flags=("--json",))
        result = verify(str(opts.env), level=opts.level, expect=opts.expect)
    except Exception as exc:  # noqa: BLE001
        return report(exc, "envbuild verify")
    for warning in result.warnings:
        sys.stderr.write(f"envbuild verify: warning: {warning}\n")
    if opts.json:
        import json

        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        for diff in result.differences:
            print(diff.line())
        if result.ok:
            print(f"ok: {result.env} matches {result.manifest_digest} ({result.level})")
    sys.stdout.flush()
    return 0 if result.ok else 1
