"""`envbuild build` without typer, for CI loops and scripts: importing typer (and the
pydantic it pulls in) is most of a cache hit's time. Taken only when stderr is not a
terminal (a terminal gets typer's live progress) and every argument is one `build` knows;
anything else (help, a mistake to explain, global options) returns None and goes to typer,
which parses the same options (`cli.build`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .build import BuildResult

_FLAGS = {"--offline": "offline", "--force": "force", "--json": "json"}
_VALUES = {"--store": "store", "--python": "python", "--verify": "verify", "--link": "link",
           "--installer": "installer"}


def parse_build(args: list[str]) -> dict[str, str | bool | None] | None:
    """The options of `build RECIPE [--store DIR] [--python P] [--offline] [--force]
    [--verify L] [--link M] [--installer I] [--json]`; None if anything else is there."""
    opts: dict[str, str | bool | None] = {"offline": False, "force": False, "json": False,
                                          "store": None, "python": None, "verify": "files",
                                          "link": None, "installer": "trees", "recipe": None}
    words = list(args)
    while words:
        word = words.pop(0)
        name, eq, value = word.partition("=")
        if word in _FLAGS:
            opts[_FLAGS[word]] = True
        elif name in _VALUES:
            if not eq:
                if not words:
                    return None
                value = words.pop(0)
            if not value:
                return None
            opts[_VALUES[name]] = value
        elif word.startswith("-") or opts["recipe"] is not None:
            return None
        else:
            opts["recipe"] = word
    return opts if opts["recipe"] else None


def build_main(args: list[str]) -> int | None:
    """The build's exit code, or None: typer's to do."""
    opts = parse_build(args)
    if opts is None or sys.stderr.isatty():
        return None
    import logging
    from pathlib import Path

    from .errors import DEBUG_HINT, EnvbuildError, report
    from .reuse import build_or_reuse

    logging.basicConfig(level=logging.WARNING, format="envbuild: %(levelname)s: %(message)s",
                        stream=sys.stderr)

    def say(message: str) -> None:
        sys.stderr.write(f"envbuild: {message}\n")
        sys.stderr.flush()

    store = opts["store"]
    try:
        result = build_or_reuse(Path(str(opts["recipe"])),
                                store=Path(store) if isinstance(store, str) else None,
                                python=opts["python"] if isinstance(opts["python"], str)
                                else None, offline=bool(opts["offline"]),
                                force=bool(opts["force"]), level=str(opts["verify"]),
                                progress=say, installer=str(opts["installer"]),
                                link=opts["link"] if isinstance(opts["link"], str) else None)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001
        code = report(exc, "envbuild")
        if not isinstance(exc, EnvbuildError):
            say(DEBUG_HINT)
        return code
    show_result(result, bool(opts["json"]), say)
    return 0


def show_result(result: BuildResult, as_json: bool, say: Callable[[str], None]) -> None:
    """What `build` prints, typer or not: the JSON object, or a note and the env's path
    (the last line of stdout)."""
    if as_json:
        import json

        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        say(f"{'reused' if result.cached else 'built'} {result.path} "
            f"({result.manifest_digest})")
        print(result.path)
