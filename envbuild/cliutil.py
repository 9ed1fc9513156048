"""What every command module shares: library errors as messages and exit codes, progress
and notes on stderr (silenced by --quiet), and help for the commands that parse their own
arguments (`run`, `verify`)."""

# No `from __future__ import annotations`: see cli.py.

import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperCommand

from .errors import DEBUG_HINT, EnvbuildError, report


class Settings:
    """The global options (`envbuild --quiet --debug COMMAND`), set once per process."""

    quiet = False
    debug = False


@contextmanager
def handle_errors() -> Iterator[None]:
    """The one place errors become messages and exit codes: envbuild's own by their class;
    anything else (a store deleted under a build, a bug) as one line, with the traceback
    only under --debug."""
    try:
        yield
    except EnvbuildError as exc:
        if Settings.debug:
            traceback.print_exc()
        raise typer.Exit(report(exc, "envbuild")) from None
    except (typer.Exit, typer.Abort, typer.BadParameter):   # the command's own exits
        raise
    except KeyboardInterrupt:
        typer.echo("envbuild: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001
        if Settings.debug:
            traceback.print_exc()
        code = report(exc, "envbuild")
        if not Settings.debug:
            typer.echo(f"envbuild: {DEBUG_HINT}", err=True)   # an error: even with -q
        raise typer.Exit(code) from None


def note(message: str) -> None:
    """A line for the person at the terminal (not the result: that goes to stdout)."""
    if not Settings.quiet:
        typer.echo(f"envbuild: {message}", err=True)


@contextmanager
def progress_line() -> Iterator[Callable[[str], None]]:
    """A live status line on a terminal; plain lines on stderr otherwise (CI logs); nothing
    with --quiet."""
    if Settings.quiet or not sys.stderr.isatty():
        yield note
        return
    from rich.console import Console

    console = Console(stderr=True, log_path=False)
    with console.status("envbuild: starting") as status:
        def say(message: str) -> None:
            console.log(f"envbuild: {message}")
            status.update(f"envbuild: {message}")
        yield say


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
_PLACEHOLDER = re.compile(r" <[^<>]+>")


class Command(TyperCommand):
    """`-h` as well as `--help`; usage lines as man pages write them: `[OPTIONS] RECIPE`,
    `[NAME]`, `CMD...`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context_settings = {**HELP_OPTIONS, **(self.context_settings or {})}

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = ["[OPTIONS]"]
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or str(param.name).upper()
                name = name if param.required or name.startswith("[") else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Arguments and options without typer's type placeholders (`<path>`, `<str>`)."""
        sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                name = _PLACEHOLDER.sub("", record[0])
                sections["Arguments" if param.param_type_name == "argument"
                         else "Options"].append((name, record[1]))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def hand_parsed(usage: str, arguments: list[tuple[str, str]],
                options: list[tuple[str, str]]) -> type[TyperCommand]:
    """A command class whose help shows `usage`, `arguments` and `options` as given: the
    command parses its own arguments (the launch path's parser), so typer has none to show."""

    class HandParsed(Command):
        def collect_usage_pieces(self, ctx: Any) -> list[str]:
            return [usage]

        def format_options(self, ctx: Any, formatter: Any) -> None:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
            with formatter.section("Options"):
                formatter.write_dl([*options, ("-h, --help", "Show this message and exit.")])

    return HandParsed
