"""The second resolver: `uv pip compile`, run as hermetically as pip-compile is.

uv resolves for the interpreter `--python` names (its markers and tags, as pip-compile
takes them from the interpreter that runs it) and writes the same pip-compatible text as
the pip-tools path: pinned, every artifact hashed, `# via` annotations in pip-tools' split
style, extras stripped, no header, no index or find-links lines. envbuild writes the
header. The recipe and its [index] table are the only inputs: no `UV_*` variable, no
uv.toml or pyproject.toml, no pip configuration, no keyring reaches uv.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .errors import InputError, LockError, ToolError
from .interpreter import probe
from .lock import redact_url, resolver_args
from .pipfail import unreachable
from .proc import hermetic_env, run_tool
from .recipe import Recipe
from .store import Store
from .trust import find_trust

MISSING = ("--resolver uv: expected the uv package, found none; "
           "pip install 'envbuild[uv]'")
# uv's words for "the index answered and has nothing that satisfies this"
_UNSATISFIABLE = ("No solution found when resolving dependencies",)


def find_uv() -> str:
    """uv's binary from the `uv` package installed beside envbuild (never PATH's uv: the
    version in the lock header is the one that resolved)."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        raise InputError(MISSING) from None


def uv_version() -> str:
    """The installed `uv` package's version: that of the binary `find_uv` returns."""
    from .proc import dist_version

    found = dist_version("uv")
    if found is None:
        raise InputError(MISSING)
    return found


class UvResolver:
    """`uv pip compile --generate-hashes` for the interpreter `python`, with its cache in
    the store (`--store`, else the default one), so a second lock reads what the first
    fetched."""

    name = "uv"

    def __init__(self, python: str, store_dir: Path | None = None) -> None:
        self.uv = find_uv()     # before the store is made: without uv, nothing is written
        self.python = python
        self.cache_dir = Path(Store.locate(store_dir).layout.uv_cache)

    def version(self) -> str:
        return uv_version()

    def resolve(self, recipe: Recipe, previous: str | None, upgrade: bool,
                upgrade_packages: tuple[str, ...]) -> str:
        with tempfile.TemporaryDirectory(prefix="envbuild-lock-") as tmp:
            work = Path(tmp)
            # named as pip-tools' input is, so the `# via -r recipe.in` lines are the same
            (work / "recipe.in").write_text("\n".join(recipe.dependencies) + "\n")
            if previous is not None and not upgrade:
                # uv, like pip-compile, prefers the pins it finds in its output file
                (work / "recipe.txt").write_text(previous)
            argv = self.argv(recipe, upgrade, upgrade_packages)
            trust = find_trust("install")   # the CA file pip would be given, by one rule
            env = uv_env()
            if trust.cert and os.path.isfile(trust.cert):
                env["SSL_CERT_FILE"] = trust.cert
            try:
                run_tool(argv, env=env, cwd=work)
            except ToolError as exc:
                found = unreachable(exc.output, recipe.index_url, trust)
                if found is not None:
                    raise found from None
                if any(sign in exc.output for sign in _UNSATISFIABLE):
                    tail = "\n".join(exc.output.strip().splitlines()[-8:])
                    raise LockError(
                        f"{recipe.path}: dependencies: cannot be satisfied from "
                        f"{redact_url(recipe.index_url)}; change the requirement or the "
                        f"[index] table:\n{tail}") from None
                raise
            text = (work / "recipe.txt").read_text()
        if not any(Requirement(d).marker for d in recipe.dependencies):
            return text
        return with_markers(text, recipe, probe(self.python).markers)

    def argv(self, recipe: Recipe, upgrade: bool,
             upgrade_packages: tuple[str, ...]) -> list[str]:
        """The command line: every setting that changes the answer is given explicitly."""
        argv = [self.uv, "pip", "compile", "--quiet", "--no-progress", "--color", "never",
                "--no-config", "--python", self.python, "--no-python-downloads",
                "--cache-dir", str(self.cache_dir), "--native-tls",
                "--generate-hashes", "--no-header", "--annotation-style", "split",
                "--index-url", recipe.index_url, "--index-strategy", "first-index",
                "--keyring-provider", "disabled", "--resolution", "highest",
                "--output-file", "recipe.txt"]
        return [*argv, *resolver_args(recipe, upgrade, upgrade_packages), "recipe.in"]


def with_markers(text: str, recipe: Recipe, environment: dict[str, str]) -> str:
    """uv's output with each recipe requirement's marker on its pin, as pip-compile writes
    it: `name==1.0 ; marker`, for the requirements whose marker holds for the target (the
    last such one of a name wins); uv strips them all."""
    markers: dict[str, str] = {}
    for dependency in recipe.dependencies:
        req = Requirement(dependency)
        if req.marker is not None and req.marker.evaluate(dict(environment, extra="")):
            markers[canonicalize_name(req.name)] = str(req.marker)
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines):
        if line[:1] in ("", " ", "#", "\n", "-"):
            continue    # hashes, annotations, options: only a pin starts a line
        end = "\n" if line.endswith("\n") else ""
        pin, sep, rest = line[:len(line) - len(end)].partition(" \\")
        marker = markers.get(canonicalize_name(Requirement(pin).name))
        if marker is not None:
            lines[number] = f"{pin} ; {marker}{sep}{rest}{end}"
    return "".join(lines)


def uv_env() -> dict[str, str]:
    """pip's hermetic environment (no `UV_*` variable survives it) plus `UV_NO_CONFIG`,
    which `--no-config` repeats: no uv.toml (user, system, cwd) and no pyproject.toml."""
    return hermetic_env({"UV_NO_CONFIG": "1"})
