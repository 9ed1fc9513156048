"""`envbuild stage ...`: the staging commands (publish, list, rollback, gc, fetch)."""

# No `from __future__ import annotations`: see cli.py.

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cliutil import HELP_OPTIONS, Command, handle_errors, note, progress_line

stage_app = typer.Typer(
    help="Shared-disk staging: publish an env to a staging root once, launch it from many "
         "nodes (`envbuild run ROOT/NAME [--local DIR] -- CMD`), roll back, collect garbage.",
    no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS)
_ROOT = typer.Option("--root", metavar="DIR",
                     help="The staging root (a directory on the shared disk).")


@stage_app.command("publish", cls=Command)
def stage_publish(
    env: Annotated[Path, typer.Argument(metavar="ENV", help="A built env (the path "
                                        "`envbuild build` prints).")],
    root: Annotated[Path, _ROOT],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object with pointer, "
                                          "version, generation and manifest_digest.")] = False,
) -> None:
    """Copy ENV to ROOT/.envs/<name>-<key>/ (verified, read-only) with its archive, then
    point ROOT/<name> at it. Prints the pointer's absolute path.

    Example: envbuild stage publish "$(envbuild build recipe.toml | tail -1)" --root /shared/envs
    """
    from .stage import publish

    with handle_errors(), progress_line() as progress:
        result = publish(env, root, progress=progress)
    if as_json:
        typer.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        note(f"{result.version} is generation {result.generation} of {result.pointer.name}")
        typer.echo(str(result.pointer))


@stage_app.command("list", cls=Command)
def stage_list(
    root: Annotated[Path, _ROOT],
    name: Annotated[Optional[str], typer.Argument(metavar="[NAME]", help="Only this name.")] = None,  # noqa: UP007
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Every generation of every name: version, digest, when and by whom, which is current.

    Example: envbuild stage list --root /shared/envs analysis
    """
    from .stage import listing

    with handle_errors():
        rows = listing(root, name)
    if as_json:
        typer.echo(json.dumps(rows, sort_keys=True))
        return
    for row in rows:
        mark = "*" if row["current"] else (" " if row["present"] else "-")
        typer.echo(f"{mark} {row['name']} {row['generation']:>3} {row['version']} "
                   f"{row['manifest_digest']} {row['action']} {row['utc']} "
                   f"{row['user']}@{row['host']}")


@stage_app.command("rollback", cls=Command)
def stage_rollback(name: Annotated[str, typer.Argument(metavar="NAME",
                                                      help="The name to roll back.")],
                   root: Annotated[Path, _ROOT]) -> None:
    """Point ROOT/NAME back at the version before the current one.

    Example: envbuild stage rollback analysis --root /shared/envs
    """
    from .stage import rollback

    with handle_errors():
        result = rollback(name, root)
    note(f"{name} is now {result.version} (generation {result.generation})")
    typer.echo(str(result.pointer))


@stage_app.command("gc", cls=Command)
def stage_gc(
    root: Annotated[Path, _ROOT],
    keep: Annotated[int, typer.Option(metavar="N", help="Previous versions kept per name.")] = 1,
    min_age: Annotated[float, typer.Option("--min-age", metavar="DAYS", help="Keep any "
                                           "version a run used within this many "
                                           "days.")] = 7.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go.")] = False,
) -> None:
    """Remove versions that are not current, not among the --keep previous ones, and not
    used by a run within --min-age days (runs leave a lease per node, renewed hourly).

    Example: envbuild stage gc --root /shared/envs --keep 2 --dry-run
    """
    from .stage import gc

    with handle_errors():
        removed = gc(root, keep=keep, min_age_days=min_age, dry_run=dry_run)
    for version in removed:
        typer.echo(f"{'would remove' if dry_run else 'removed'} {version}")


@stage_app.command("fetch", cls=Command)
def stage_fetch(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The staged name.")],
    root: Annotated[Path, _ROOT],
    local: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        metavar="DIR", help="Node-local cache dir (default: $ENVBUILD_LOCAL).")] = None,
    bcast: Annotated[bool, typer.Option("--bcast", help="Inside a Slurm allocation: ship the "
                                        "archive to every node's local disk with sbcast, "
                                        "once, for the job's launches.")] = False,
) -> None:
    """Put NAME's current version on node-local disk ahead of the launches: materialized
    here, or with --bcast its archive sent to every node of the allocation by sbcast (run
    once from the batch script, never per task). Prints the version.

    Example: envbuild stage fetch analysis --root /shared/envs --bcast
    """
    from .stage import fetch

    with handle_errors(), progress_line() as progress:
        version = fetch(name, root, local, bcast=bcast, progress=progress)
    typer.echo(version)
