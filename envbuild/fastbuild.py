"""`envbuild build` and `envbuild lock` without typer, for CI loops and scripts: importing
typer (and the pydantic it pulls in) is most of a cache hit's time, and most of what a
lock adds to uv's resolution. Taken only when stderr is not a terminal (a terminal gets typer's live
progress) and every argument is one the command knows; anything else (help, a mistake to
explain, global options, `lock --check`) returns None and goes to typer, which parses the
same options (`cli.build`, `cli.lock`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from .build import BuildResult

Options = dict[str, "str | bool | list[str] | None"]
Say = Callable[[str], None]

_BUILD_FLAGS = {"--offline": "offline", "--force": "force", "--json": "json"}
_BUILD_VALUES = {"--store": "store", "--python": "python", "--verify": "verify",
                 "--link": "link", "--installer": "installer"}
_LOCK_FLAGS = {"--upgrade": "upgrade"}
_LOCK_VALUES = {"--store": "store", "--python": "python", "--resolver": "resolver",
                "--upgrade-package": "upgrade_package", "-P": "upgrade_package"}


def parse(args: list[str], flags: dict[str, str], values: dict[str, str],
          defaults: Options, repeated: tuple[str, ...] = ()) -> Options | None:
    """One RECIPE and the options `flags` and `values` name (those in `repeated` may come
    again, into a list); None if anything else is there."""
    opts: Options = {**defaults, "recipe": None}
    words = list(args)
    while words:
        word = words.pop(0)
        name, eq, value = word.partition("=")
        if word in flags:
            opts[flags[word]] = True
        elif name in values:
            if not eq:
                if not words:
                    return None
                value = words.pop(0)
            if not value:
                return None
            key = values[name]
            if key in repeated:
                opts[key] = [*(opts.get(key) or []), value]   # type: ignore[misc]
            else:
                opts[key] = value
        elif word.startswith("-") or opts["recipe"] is not None:
            return None
        else:
            opts["recipe"] = word
    return opts if opts["recipe"] else None


def parse_build(args: list[str]) -> Options | None:
    """The options of `build RECIPE [--store DIR] [--python P] [--offline] [--force]
    [--verify L] [--link M] [--installer I] [--json]`; None if anything else is there."""
    return parse(args, _BUILD_FLAGS, _BUILD_VALUES,
                 {"offline": False, "force": False, "json": False, "store": None,
                  "python": None, "verify": "files", "link": None, "installer": "trees"})


def parse_lock(args: list[str]) -> Options | None:
    """The options of `lock RECIPE [--upgrade] [--upgrade-package P ...] [--python P]
    [--store DIR] [--resolver R]`; None if anything else is there (`--check` too)."""
    return parse(args, _LOCK_FLAGS, _LOCK_VALUES,
                 {"upgrade": False, "upgrade_package": None, "store": None, "python": None,
                  "resolver": None}, repeated=("upgrade_package",))


def _text(value: str | bool | list[str] | None) -> str | None:
    return value if isinstance(value, str) else None


def build_main(args: list[str]) -> int | None:
    """The build's exit code, or None: typer's to do."""
    opts = parse_build(args)
    if opts is None or sys.stderr.isatty():
        return None

    def command(say: Say) -> None:
        from pathlib import Path

        from .reuse import build_or_reuse

        store = _text(opts["store"])
        result = build_or_reuse(Path(str(opts["recipe"])),
                                store=Path(store) if store else None,
                                python=_text(opts["python"]), offline=bool(opts["offline"]),
                                force=bool(opts["force"]), level=str(opts["verify"]),
                                progress=say, installer=str(opts["installer"]),
                                link=_text(opts["link"]))
        show_result(result, bool(opts["json"]), say)

    return run_fast(command)


def lock_main(args: list[str]) -> int | None:
    """The lock's exit code, or None: typer's to do."""
    opts = parse_lock(args)
    if opts is None or sys.stderr.isatty():
        return None

    def command(say: Say) -> None:
        from pathlib import Path

        store = _text(opts["store"])
        packages = opts["upgrade_package"]
        print(lock_at(Path(str(opts["recipe"])), bool(opts["upgrade"]),
                      tuple(packages) if isinstance(packages, list) else (),
                      _text(opts["python"]), Path(store) if store else None,
                      _text(opts["resolver"]), say))

    return run_fast(command)


def lock_at(recipe: Path, upgrade: bool, upgrade_packages: tuple[str, ...],
            python: str | None, store: Path | None, resolver: str | None,
            progress: Say) -> Path:
    """`envbuild lock RECIPE`, typer or not: the lock written beside the recipe."""
    from .lock import lock_recipe, redact_url, resolver_for, resolver_name
    from .recipe import load_recipe
    from .tools import lock_target

    loaded = load_recipe(recipe)
    name = resolver_name(resolver, loaded)
    target = lock_target(loaded, python, store, progress, name)
    chosen = resolver_for(name, target, store)
    progress(f"resolving {len(loaded.dependencies)} requirements for Python "
             f"{target.short} against {redact_url(loaded.index_url)} with {name}")
    return lock_recipe(loaded, upgrade=upgrade, target=target, resolver=chosen,
                       upgrade_packages=upgrade_packages)


def run_fast(command: Callable[[Say], None]) -> int:
    """The command run with what typer's path gives it: plain progress lines on stderr,
    warnings logged there, errors reported as `handle_errors` reports them."""
    import logging

    from .errors import DEBUG_HINT, EnvbuildError, report

    logging.basicConfig(level=logging.WARNING, format="envbuild: %(levelname)s: %(message)s",
                        stream=sys.stderr)

    def say(message: str) -> None:
        sys.stderr.write(f"envbuild: {message}\n")
        sys.stderr.flush()

    try:
        command(say)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001
        code = report(exc, "envbuild")
        if not isinstance(exc, EnvbuildError):
            say(DEBUG_HINT)
        return code
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
