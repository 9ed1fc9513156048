"""`envbuild list`, `show ENV`, `gc`: the store's envs, one env in human form, removing
unused ones. Registered on the top-level app by cli.py."""

# No `from __future__ import annotations`: see cli.py.

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cliutil import handle_errors

_STORE = typer.Option(metavar="DIR", help="Store directory (default: $ENVBUILD_STORE, else "
                      "the user cache dir); never created.")


def list_cmd(
    store: Annotated[Optional[Path], _STORE] = None,  # noqa: UP007
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of objects with "
                                          "name, key, path, recipe, size_bytes, built_utc, "
                                          "last_used_utc, damaged.")] = False,
) -> None:
    """The store's envs, one row each: name, key, size on disk, when built, when last used
    (a build, reuse or launch), whether damaged (differs from its manifest at the quick
    level, or was moved aside by a build: `envbuild gc` removes those), the recipe.

    Example: envbuild list --store /var/cache/envbuild --json
    """
    from .storeview import list_envs, open_store, table

    with handle_errors():
        rows = list_envs(open_store(store))
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rows], sort_keys=True))
    else:
        typer.echo("".join(f"{line}\n" for line in table(rows)), nl=False)


def show_cmd(
    env: Annotated[str, typer.Argument(metavar="ENV", help="An env's path, or NAME: the "
                                       "newest env of that name in the store.")],
    store: Annotated[Optional[Path], _STORE] = None,  # noqa: UP007
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest itself.")] = False,
) -> None:
    """One env's manifest in human form: interpreter, distributions, host needs, the
    environment contract, the launch policy, digests, files count.

    ENV is a path when it holds a slash or is a directory with a manifest, else a name
    looked up in the store (default: $ENVBUILD_STORE, else the user cache dir).

    Example: envbuild show demo --store ./store
    """
    from .layout import MANIFEST
    from .storeview import describe, find_env

    with handle_errors():
        path = find_env(env, store)
        lines = [(path / MANIFEST).read_text("utf-8")] if as_json else describe(path)
    typer.echo("".join(f"{line}\n" for line in lines), nl=False)


def gc_cmd(
    store: Annotated[Optional[Path], _STORE] = None,  # noqa: UP007
    keep_days: Annotated[float, typer.Option("--keep-days", metavar="N", help="Keep every "
                                             "env built, reused or launched within this "
                                             "many days (default 30).")] = 30.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go and the bytes "
                                          "it would free; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object: removed, kept "
                                          "(each path, size_bytes, why), freed_bytes.")] = False,
) -> None:
    """Remove envs not used within --keep-days (default 30), every env a build moved aside
    (damaged, replaced), and build leftovers older than a day whose builder is gone. An env
    a build of its key is locking, or one used meanwhile, stays. Prints one line per removed
    path and the total.

    Example: envbuild gc --keep-days 7 --dry-run
    """
    from .storegc import gc
    from .storeview import human_size

    with handle_errors():
        result = gc(store, keep_days=keep_days, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(result.to_json(), sort_keys=True))
        return
    verb = "would remove" if dry_run else "removed"
    for r in result.removed:
        typer.echo(f"{verb} {r.path} ({human_size(r.size_bytes)}; {r.why})")
    typer.echo(f"{'would free' if dry_run else 'freed'} {human_size(result.freed_bytes)} "
               f"({len(result.removed)} paths)")
