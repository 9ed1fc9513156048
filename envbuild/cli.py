"""The command line: each command parses, calls one library function, prints."""

# No `from __future__ import annotations` here: typer reads these annotations at run time,
# and on Python 3.9 it cannot evaluate them from strings (options lose their names).

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .cli_stage import stage_app
from .cli_store import gc_cmd, list_cmd, show_cmd
from .cliutil import (
    HELP_OPTIONS,
    Command,
    Settings,
    hand_parsed,
    handle_errors,
    note,
    progress_line,
)

if TYPE_CHECKING:
    from .recipe import Recipe

app = typer.Typer(
    help="Provable Python environments: lock a recipe, build a content-addressed venv with "
         "a manifest, verify it at every launch, run programs in it.",
    epilog="Start: envbuild lock app.toml; ENV=$(envbuild build app.toml); envbuild run "
           "\"$ENV\" -- python -V.  Each command's -h has an example.",
    no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings=HELP_OPTIONS)
log = logging.getLogger("envbuild")


def _version(value: bool) -> None:
    if value:
        from . import BUILD_FORMAT, __version__

        typer.echo(f"envbuild {__version__} ({BUILD_FORMAT}, Python "
                   f"{'.'.join(map(str, sys.version_info[:3]))})")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Log every external command.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the result "
                                        "(no progress, no notes).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="On an error, show the "
                                        "traceback too.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print envbuild's version and exit.")] = False,
) -> None:
    Settings.quiet, Settings.debug = quiet, debug
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="envbuild: %(levelname)s: %(message)s", stream=sys.stderr)


_STORE_HELP = "Store directory (default: $ENVBUILD_STORE, else the user cache dir)."
_PYTHON_HELP = ("Interpreter to {what}: a path, a command on PATH (python3.12) or a version "
                "(3.12: python3.12 on PATH, then $PYENV_ROOT/versions/3.12.*; default: the "
                "Python running envbuild).")


@app.command(cls=Command)
def lock(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="The recipe TOML file.")],
    check: Annotated[bool, typer.Option("--check", help="Resolve nothing: exit 1 if the lock "
                                        "is missing or older than the recipe.")] = False,
    upgrade: Annotated[bool, typer.Option("--upgrade", help="Take the newest allowed "
                                          "versions instead of the lock's pins.")] = False,
    upgrade_package: Annotated[Optional[list[str]], typer.Option(  # noqa: UP007
        "--upgrade-package", "-P", metavar="PACKAGE",
        help="Upgrade only this package (repeatable).")] = None,
    python: Annotated[Optional[str], typer.Option(  # noqa: UP007
        metavar="PYTHON", help=_PYTHON_HELP.format(what="lock for"))] = None,
    store: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        metavar="DIR", help="Store whose tools/ holds pip-tools for another --python, and "
             "uv-cache/ uv's cache (default: $ENVBUILD_STORE, else the user cache dir).")] = None,
    resolver: Annotated[Optional[str], typer.Option(  # noqa: UP007
        metavar="pip-tools|uv", help="Resolve with pip-tools or uv (default: the recipe's "
        "[lock] resolver, else pip-tools); the same lock format either way.")] = None,
) -> None:
    """Resolve RECIPE with pip-tools (or uv) into <stem>.lock beside it, every artifact
    hashed.

    Ambient pip and uv configuration (PIP_*/UV_* variables, pip.conf, uv.toml, constraint
    files) is ignored: the recipe and its [index] table are the only inputs. For another
    --python, pip-compile runs in that interpreter (a venv of it with pip-tools, installed
    once from PyPI or $ENVBUILD_TOOLS_INDEX_URL into the store's tools/); uv resolves for
    it directly. Prints the lock's path.

    Example: envbuild lock recipes/webclient.toml --python 3.12 --resolver uv
    """
    from .fastbuild import lock_at
    from .recipe import load_recipe

    with handle_errors():
        if check:
            _check_lock(load_recipe(recipe), python)
            return
        with progress_line() as progress:
            path = lock_at(recipe, upgrade, tuple(upgrade_package or ()), python, store,
                           resolver, progress)
    typer.echo(str(path))


def _check_lock(loaded: "Recipe", python: Optional[str]) -> None:  # noqa: UP007
    """`lock --check`: exit 1 with the reason if the lock is missing, stale, or (with
    --python) made for another Python."""
    from .lock import lock_status

    version = None
    if python is not None:
        from .interpreter import probe

        version = ".".join(probe(python).version.split(".")[:2])
    problem = lock_status(loaded, version)
    if problem:
        typer.echo(f"envbuild: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{loaded.lock_path}: up to date")


@app.command(cls=Command)
def build(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="The recipe TOML file (its "
                                           "lock must be fresh: see `envbuild lock`).")],
    store: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        metavar="DIR", help=_STORE_HELP)] = None,
    python: Annotated[Optional[str], typer.Option(  # noqa: UP007
        metavar="PYTHON", help=_PYTHON_HELP.format(what="build for"))] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Use only the wheel cache; fetch "
                                          "nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Build again even if the store "
                                        "has an intact env for this lock.")] = False,
    verify_level: Annotated[str, typer.Option("--verify", metavar="files|full",
                                              help="How an env already in the store is "
                                              "checked before it is reused (default "
                                              "files: every path's size and mode; full: "
                                              "every byte).")] = "files",
    link: Annotated[Optional[str], typer.Option(  # noqa: UP007
        "--link", metavar="hardlink|reflink|copy",
        help="How the env's files are put in place from the store's installed wheels "
             "(default: reflink where the file system can, else copy; hardlink shares "
             "inodes with the store).")] = None,
    installer: Annotated[str, typer.Option(
        "--installer", metavar="trees|pip",
        help="trees (default): each wheel installed once per store and Python; pip: pip "
             "installs every wheel into the env (the reference, same tree).")] = "trees",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object with path, "
                                          "env_key and manifest_digest.")] = False,
) -> None:
    """Build the env the lock describes, or reuse it if it exists intact. Prints its path.

    The wheel cache is filled from the lock (hash-checked); each wheel not yet installed
    in the store (<store>/trees/) is installed there once, offline, and the env's files
    are put in place from those trees (--link). The env lands at
    <store>/envs/<name>-<key>/, complete or not at all. An env already
    there is verified first; a damaged one is moved aside to
    <store>/envs/.damaged-<name>-<key>-<utc>/ and built again.

    Example: envbuild build recipes/webclient.toml --json
    """
    from .reuse import build_or_reuse

    with handle_errors(), progress_line() as progress:
        result = build_or_reuse(recipe, store=store, python=python, offline=offline,
                                force=force, level=verify_level, progress=progress,
                                link=link, installer=installer)
    from .fastbuild import show_result

    show_result(result, as_json, note)


@app.command(cls=Command)
def image(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="The recipe TOML file (its "
                                           "lock must be fresh and made for the base's "
                                           "Python).")],
    tag: Annotated[str, typer.Option("--tag", "-t", metavar="NAME:TAG", help="The image's name:tag "
                                     "(REGISTRY/REPO:TAG to --push).")],
    base: Annotated[Optional[str], typer.Option(  # noqa: UP007
        metavar="IMAGE", help="Base image in the engine (default: the recipe's [image] "
                              "base); never pulled.")] = None,
    push: Annotated[bool, typer.Option("--push", help="Push the image to the tag's registry "
                                       "and print REPO@sha256:DIGEST.")] = False,
    ca: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        metavar="FILE",
        help="CA certificates (PEM) for a TLS registry the system does not trust.")] = None,
    store: Annotated[Optional[Path], typer.Option(  # noqa: UP007
        metavar="DIR", help=_STORE_HELP)] = None,
    force: Annotated[bool, typer.Option("--force", help="Run the builder stage even if the "
                                        "store has this env's layers from the same "
                                        "inputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object with image_id, "
                                          "manifest_digest and pushed_digest.")] = False,
) -> None:
    """Build RECIPE's env into a container image through the docker engine at $DOCKER_HOST.

    The env is built inside the base image by its own python3, offline (network none), by
    the builder stage of Dockerfile.template; the final image is written by envbuild: the
    base's layers verbatim, the env at /opt/envbuild/NAME in a few deterministic layers,
    ENTRYPOINT the env's envbuild-guard (every `docker run IMAGE CMD...` verifies first),
    CMD the recipe's [image] entrypoint, a numeric non-root user. The same lock and base give
    the same image ID on any engine. Prints the image ID (with --push, REPO@sha256:...).

    Example: envbuild image recipes/webclient.toml --tag localhost/webclient:1
    """
    from .image import build_image

    with handle_errors(), progress_line() as progress:
        result = build_image(recipe, tag, base=base, store_dir=store, push=push, ca=ca,
                             progress=progress, force=force)
    if as_json:
        typer.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        note(f"image {result.tag} ({result.manifest_digest})")
        typer.echo(result.pushed or result.image_id)


@app.command("diff", cls=Command)
def diff_cmd(a: Annotated[str, typer.Argument(
                 metavar="A", help="An env, staged pointer, manifest, run record FILE:LINE, "
                                   "verify --json report or docker://IMAGE.")],
             b: Annotated[str, typer.Argument(metavar="B", help="The same kinds as A.")],
             as_json: Annotated[bool, typer.Option("--json", help="A JSON list.")] = False,
             files: Annotated[bool, typer.Option("--files", help="File-level changes, per "
                                                 "distribution.")] = False) -> None:
    """What differs from A to B, one `KIND: SUBJECT: A -> B` line each; exit 1 if any.

    Interpreter, distributions (added, missing, another version), host needs, the
    environment contract; with --files, the files each changed distribution changed.

    Example: envbuild diff runs/node-a.jsonl:12 runs/node-b.jsonl:40
    """
    from .diff import diff

    with handle_errors():
        result = diff(a, b, files=files)
    lines = [json.dumps([d.to_json() for d in result.all_differences()])] if as_json \
        else result.lines()
    typer.echo("".join(f"{x}\n" for x in lines), nl=False)
    raise typer.Exit(0 if result.same else 1)


@app.command("export", cls=Command)
def export_cmd(env: Annotated[str, typer.Argument(metavar="ENV", help="An env, staged pointer or "
                                                  "docker://IMAGE.")],
               fmt: Annotated[str, typer.Option("--format", metavar="pylock|cyclonedx|"
                                                "requirements", help="The standard to "
                                                "write.")],
               output: Annotated[Optional[Path], typer.Option(  # noqa: UP007
                   "--output", "-o", metavar="FILE",
                   help="Write here (default: stdout).")] = None) -> None:
    """ENV as PEP 751 pylock.toml, a CycloneDX JSON SBOM, or requirements with hashes.

    Made from the manifest (what is inside, with the artifacts' hashes), not from the
    recipe. cyclonedx needs `pip install 'envbuild[sbom]'`.

    Example: envbuild export "$ENV" --format cyclonedx -o sbom.json
    """
    from .export import export

    with handle_errors():
        text = export(env, fmt, output)
    if output is None:
        typer.echo(text, nl=False)


_LEVEL = ("--level quick|files|full", "quick (default): the manifest, the interpreter, "
          "everything the start reads, owners and modes a launch reads, host libraries by "
          "version; files: + every file's size and mode, nothing added; full: + every byte.")
_EXPECT = ("--expect sha256:HEX", "The manifest digest the env must have (what `build "
           "--json` printed).")
_HAND = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_HAND, cls=hand_parsed(
    "ENV [--level L] [--expect sha256:HEX] [--launch] [--json]",
    [("ENV", "An env, a staged pointer ROOT/NAME, or docker://IMAGE.")],
    [_LEVEL, _EXPECT,
     ("--launch", "Also the launch's own checks: the variables the recipe requires."),
     ("--json", "Print a report with manifest_digest and every difference.")]))
def verify(ctx: typer.Context) -> None:
    """Compare ENV with its manifest; list every difference, one line each.

    Prints KIND: SUBJECT: expected X, found Y per difference. Exit 0 if it matches, 1 if it
    differs, 2 if ENV is not an env (or the input is bad, or verify fails itself). The
    required variables of the recipe's environment contract belong to launches: plain
    verify leaves them out, so a CI step can check the artifact without the job's variables.

    Example: envbuild verify "$ENV" --level full --expect "$DIGEST"
    """
    from .fastcli import verify_main

    raise typer.Exit(verify_main(list(ctx.args)))


@app.command(context_settings={**_HAND, "allow_interspersed_args": False},
             cls=hand_parsed(
    "ENV [--level L] [--expect sha256:HEX] [--local DIR] [--max-readers K] [--] CMD ARGS...",
    [("ENV", "An env, a staged pointer ROOT/NAME, or docker://IMAGE."),
     ("CMD ARGS...", "The program and its arguments (after --, or the first word after "
                     "ENV that is not an option).")],
    [(_LEVEL[0], "As for `envbuild verify` (default quick, the launch check)."), _EXPECT,
     ("--local DIR", "A staged ENV: unpack its version on node-local disk once per node "
                     "and run from there (default: $ENVBUILD_LOCAL)."),
     ("--max-readers K", "At most K nodes read the shared disk at once (with --local).")]))
def run(ctx: typer.Context) -> None:
    """Verify ENV, apply its environment contract, run CMD, record the run.

    The contract: the recipe's `unset` names (and PYTHONPATH, PYTHONHOME, PYTHONSTARTUP,
    PYTHONUSERBASE) removed, `set` defaults applied, `require` checked, ENV/bin first on
    PATH. SIGINT, SIGTERM and SIGQUIT reach CMD once. One JSON line per launch goes to
    $ENVBUILD_RUNLOG, else to runs/<host>.jsonl in the store. Where envbuild is not
    installed, ENV/bin/envbuild-guard does the same. A staged pointer is resolved once,
    fresh, to its current version; docker://IMAGE runs CMD through the image's guard in a
    throwaway container.

    Exits with CMD's status (128+N if killed by signal N); 125 if refused or not an env,
    126 if CMD is not executable, 127 if not found.

    Example: envbuild run "$ENV" --expect "$DIGEST" -- python train.py --epochs 3
    """
    from .fastcli import run_main

    raise typer.Exit(run_main(list(ctx.args)))


for _name, _command in (("list", list_cmd), ("show", show_cmd), ("gc", gc_cmd)):
    app.command(_name, cls=Command)(_command)
app.add_typer(stage_app, name="stage")   # after the commands: its place in --help
