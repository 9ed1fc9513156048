"""The commands that run on every launch or in tight CI loops, `run` and `verify`, parsed
without typer: importing typer (and the pydantic it pulls in) costs ~100 ms, more than the
check itself. `cli.py` shows their help; `__main__` sends everything else to typer."""

from __future__ import annotations

import sys

from .errors import NotAnEnvError
from .launch import CommandError, is_digest, launch, parse_launch_args
from .verify import LEVELS, verify

VERIFY_USAGE = ("usage: envbuild verify ENV [--level quick|files|full] [--expect sha256:HEX] "
                "[--json]")


def run_main(args: list[str]) -> int:
    """`envbuild run ENV [--level L] [--expect D] [--] CMD ARGS...`"""
    try:
        opts, cmd = parse_launch_args(args, "envbuild run", want_env=True)
    except CommandError as exc:
        sys.stderr.write(f"{exc}\n")
        return exc.code
    try:
        return launch(str(opts["env"]), cmd, level=str(opts["level"]), expect=opts["expect"])
    except Exception as exc:  # noqa: BLE001 - a failure of the launcher itself refuses:
        # exiting 1 would look like CMD's own status
        sys.stderr.write(f"envbuild run: refused: internal error: {exc!r}\n")
        return 125


def verify_main(args: list[str]) -> int:
    """`envbuild verify ...`: 0 match, 1 mismatch, 2 not an env or bad input."""
    env, level, expect, as_json = None, "quick", None, False
    words = iter(args)
    for word in words:
        name, eq, value = word.partition("=")
        if name in ("--level", "--expect"):
            if not eq:
                value = next(words, "")
            if name == "--level":
                level = value
            else:
                expect = value
        elif word == "--json":
            as_json = True
        elif word.startswith("-") or env is not None:
            return _bad(f"unexpected argument {word!r}")
        else:
            env = word
    if env is None:
        return _bad("missing ENV")
    if level not in LEVELS:
        return _bad(f"--level: expected one of {', '.join(LEVELS)}, found {level!r}")
    if expect is not None and not is_digest(expect):
        return _bad(f"--expect: expected sha256: and 64 hex digits (as `envbuild verify "
                    f"--json` prints), found {expect!r}")
    try:
        report = verify(env, level=level, expect=expect)
    except NotAnEnvError as exc:
        sys.stderr.write(f"envbuild: error: {exc}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 - never exit 1 ("differs") for a failure of ours
        sys.stderr.write(f"envbuild verify: error: could not verify {env}: {exc!r}\n")
        return 2
    if as_json:
        import json

        print(json.dumps({"env": report.env, "level": report.level, "ok": report.ok,
                          "manifest_digest": report.manifest_digest,
                          "differences": [d.to_json() for d in report.differences]},
                         sort_keys=True))
    else:
        for diff in report.differences:
            print(diff.line())
        if report.ok:
            print(f"ok: {report.env} matches {report.manifest_digest} ({report.level})")
    return 0 if report.ok else 1


def _bad(message: str) -> int:
    sys.stderr.write(f"envbuild verify: error: {message}\n{VERIFY_USAGE}\n")
    return 2
