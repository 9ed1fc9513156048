"""The one argument reader of the commands that are parsed without typer: `envbuild run`,
`envbuild verify` and `ENV/bin/envbuild-guard`. Stdlib only (the guard carries it)."""

from __future__ import annotations

from .errors import UsageError

LEVELS = ("quick", "files", "full")
RUN_USAGE = "usage: envbuild run ENV [--level L] [--expect sha256:HEX] [--] CMD ARGS..."
VERIFY_USAGE = ("usage: envbuild verify ENV [--level quick|files|full] [--expect sha256:HEX] "
                "[--json]")
GUARD_USAGE = "usage: envbuild-guard [--level L] [--expect sha256:HEX] [--] CMD ARGS..."


class Args:
    __slots__ = ("env", "level", "expect", "json", "cmd")

    def __init__(self) -> None:
        self.env: str | None = None
        self.level = "quick"
        self.expect: str | None = None
        self.json = False
        self.cmd: list[str] = []


def is_digest(value: str) -> bool:
    """`sha256:` and 64 lowercase hex digits, the form every envbuild digest takes."""
    hexpart = value[7:]
    return (value.startswith("sha256:") and len(hexpart) == 64
            and all(c in "0123456789abcdef" for c in hexpart))


def parse(args: list[str], usage: str, want_env: bool, want_cmd: bool,
          flags: tuple[str, ...] = ()) -> Args:
    """`[ENV] [--level L] [--expect D] [FLAGS] [--] [CMD ARGS...]`; raise UsageError.

    With `want_cmd`, options stop at the first word after ENV (that word starts CMD, whose
    own options are its own); without, options may come anywhere.
    """
    out = Args()
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--" and want_cmd:
            break
        name, eq, value = word.partition("=")
        if name in ("--level", "--expect"):
            if not eq:
                if i >= len(words):
                    raise UsageError(f"{name} needs a value", usage)
                value = words[i]
                i += 1
            if name == "--level":
                out.level = value
            else:
                out.expect = value
        elif word in flags:
            setattr(out, word[2:], True)
        elif name == "--local":
            raise UsageError("--local: staged envs are not supported by this version; run "
                             "the env directly", usage)
        elif word.startswith("-") and word != "-":
            raise UsageError(f"unexpected argument {word!r} (unknown option; options: "
                             f"--level, --expect{''.join(', ' + f for f in flags)}"
                             f"{'; put -- before CMD' if want_cmd else ''})", usage)
        elif want_env and out.env is None:
            out.env = word
        elif want_cmd:
            i -= 1
            break
        else:
            raise UsageError(f"unexpected argument {word!r}", usage)
    out.cmd = words[i:] if want_cmd else []
    if out.level not in LEVELS:
        raise UsageError(f"--level: expected one of {', '.join(LEVELS)}, found {out.level!r}",
                         usage)
    if out.expect is not None and not is_digest(out.expect):
        raise UsageError(f"--expect: expected sha256: and 64 hex digits (as `envbuild verify "
                         f"--json` prints), found {out.expect!r}", usage)
    if want_env and out.env is None:
        raise UsageError("missing ENV" + (" then CMD" if want_cmd else ""), usage)
    return out
