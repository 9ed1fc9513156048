"""What every command module shares: library errors as messages and exit codes, and
progress on stderr."""

# No `from __future__ import annotations`: see cli.py.

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer

from .errors import EnvbuildError, report


@contextmanager
def handle_errors() -> Iterator[None]:
    """The one place library errors become messages and exit codes."""
    try:
        yield
    except EnvbuildError as exc:
        raise typer.Exit(report(exc, "envbuild")) from None


@contextmanager
def progress_line() -> Iterator[Callable[[str], None]]:
    """A live status line on a terminal; plain lines on stderr otherwise (CI logs)."""
    if not sys.stderr.isatty():
        yield lambda message: typer.echo(f"envbuild: {message}", err=True)
        return
    from rich.console import Console

    console = Console(stderr=True, log_path=False)
    with console.status("envbuild: starting") as status:
        def say(message: str) -> None:
            console.log(f"envbuild: {message}")
            status.update(f"envbuild: {message}")
        yield say
