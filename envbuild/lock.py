"""Locking a recipe with a resolver, and reading locks back.

The lock is pip-compatible requirements text (`pip install --require-hashes -r` takes it)
under a comment header that records what it was made from.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

from .errors import LockError, ToolError, UsageError
from .fsutil import atomic_write
from .proc import dist_version, hermetic_env, run_tool
from .recipe import RESOLVERS, Recipe

if TYPE_CHECKING:
    from packaging.markers import Marker

LOCK_SCHEMA = "envbuild.lock/1"
_HEADER_KEYS = ("recipe", "resolver", "python", "index-url", "find-links")


class Resolver(Protocol):
    """The seam a second resolver plugs into: recipe in, hashed requirements text out."""

    name: str

    def version(self) -> str: ...

    def resolve(self, recipe: Recipe, previous: str | None, upgrade: bool,
                upgrade_packages: tuple[str, ...]) -> str: ...


def resolver_args(recipe: Recipe, upgrade: bool, upgrade_packages: tuple[str, ...]
                  ) -> list[str]:
    """What pip-compile and uv pip compile take alike: the recipe's find-links and what to
    upgrade."""
    argv: list[str] = []
    for link in recipe.find_links:
        argv += ["--find-links", str(link)]
    if upgrade:
        argv.append("--upgrade")
    for package in upgrade_packages:
        argv += ["--upgrade-package", package]
    return argv


class PipToolsResolver:
    """pip-compile, run hermetically: the recipe and its [index] are the only inputs."""

    name = "pip-tools"

    def __init__(self, python: str | None = None) -> None:
        # pip-compile resolves for the interpreter that runs it (see envbuild.tools)
        self.python = python or sys.executable

    def version(self) -> str:
        return dist_version("pip-tools", "piptools") or "(not installed)"

    def resolve(self, recipe: Recipe, previous: str | None, upgrade: bool,
                upgrade_packages: tuple[str, ...]) -> str:
        from .trust import find_trust  # (and pipfail, below): only when resolving

        trust = find_trust("install")
        with tempfile.TemporaryDirectory(prefix="envbuild-lock-") as tmp:
            work = Path(tmp)
            (work / "recipe.in").write_text("\n".join(recipe.dependencies) + "\n")
            if previous is not None and not upgrade:
                # pip-compile keeps the pins it finds in its output file.
                (work / "recipe.txt").write_text(previous)
            argv = [self.python, "-m", "piptools", "compile", "--verbose", "--no-config",
                    "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-header",
                    "--no-emit-index-url", "--no-emit-find-links", "--no-emit-trusted-host",
                    "--index-url", recipe.index_url, "--output-file", "recipe.txt"]
            argv += [*resolver_args(recipe, upgrade, upgrade_packages), *trust.pip_args(),
                     "recipe.in"]     # trust only: never in the lock
            try:
                run_tool(argv, env=hermetic_env(), cwd=work)
            except ToolError as exc:
                from .pipfail import lock_failure

                raise lock_failure(exc, recipe, trust) from None
            return (work / "recipe.txt").read_text()


class LockEntry(NamedTuple):
    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]          # "sha256:<hex>", as the lock lists them

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


class Lock(NamedTuple):
    path: Path
    text: str
    header: dict[str, str]
    entries: tuple[LockEntry, ...] = ()


class Target(NamedTuple):
    """The Python a lock is made for: its version, implementation, and the interpreter
    that runs pip-compile for it."""

    version: str                # X.Y.Z
    implementation: str
    runner: str

    @property
    def short(self) -> str:
        return ".".join(self.version.split(".")[:2])


def running_target() -> Target:
    return Target("{}.{}.{}".format(*sys.version_info[:3]), sys.implementation.name,
                  sys.executable)


def lock_recipe(recipe: Recipe, *, upgrade: bool = False, upgrade_packages: tuple[str, ...] = (),
                resolver: Resolver | None = None, target: Target | None = None) -> Path:
    """Resolve the recipe for `target` (default: the Python running envbuild) and write
    `<stem>.lock` beside it, atomically."""
    target = target or running_target()
    found = (f"{target.version} running envbuild" if target.runner == sys.executable
             else f"{target.version} ({target.implementation})")
    recipe.check_python(target.version, found, "pass --python naming a matching Python")
    resolver = resolver or PipToolsResolver(target.runner)
    previous = recipe.lock_path.read_text() if recipe.lock_path.exists() else None
    body = resolver.resolve(recipe, previous, upgrade, upgrade_packages)
    header = {
        "recipe": recipe.digest,
        "resolver": f"{resolver.name} {resolver.version()}",
        "python": f"{target.short} ({target.implementation})",
        "index-url": redact_url(recipe.index_url),
        "find-links": " ".join(recipe.find_links_as_written) or "-",
    }
    lines = [f"# {LOCK_SCHEMA}"] + [f"# {k}: {header[k]}" for k in _HEADER_KEYS]
    text = "\n".join(lines) + "\n#\n" + body
    atomic_write(recipe.lock_path, text)
    return recipe.lock_path


def lock_status(recipe: Recipe, python: str | None = None) -> str | None:
    """None if the lock matches the recipe (and was made for Python `python`, X.Y, when
    given), else why not. Resolves nothing."""
    path = recipe.lock_path
    if not path.exists():
        return f"{path}: no lock; run `envbuild lock {recipe.path}`"
    header = read_header(path.read_text(), path)
    # a lock made before the digest was taken by meaning records the file's bytes' digest
    if header.get("recipe") not in (recipe.digest, recipe.bytes_digest):
        return (f"{path}: stale: expected recipe digest {recipe.digest}, lock records "
                f"{header.get('recipe')}; run `envbuild lock {recipe.path}`")
    locked_for = header.get("python", "").split(" ")[0]
    if python is not None and locked_for != python:
        return (f"{path}: locked for Python {locked_for or '?'}, expected {python}; run "
                f"`envbuild lock {recipe.path} --python {python}`")
    return None


def read_header(text: str, path: Path) -> dict[str, str]:
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# envbuild.lock/"):
        raise LockError(f"{path}: not an envbuild lock: expected a first line "
                        f"'# {LOCK_SCHEMA}', found {lines[0][:60] if lines else 'an empty file'!r}")
    if lines[0] != f"# {LOCK_SCHEMA}":
        raise LockError(f"{path}: lock format {lines[0][2:]!r} is newer than this envbuild "
                        f"understands ({LOCK_SCHEMA}); upgrade envbuild")
    header: dict[str, str] = {}
    for line in lines[1:]:
        if not line.startswith("# ") or ": " not in line:
            break
        key, _, value = line[2:].partition(": ")
        header[key] = value
    return header


def read_lock(recipe: Recipe) -> Lock:
    """The recipe's lock, refused when missing or stale (it is never silently re-locked)."""
    problem = lock_status(recipe)
    if problem:
        raise LockError(problem)
    path = recipe.lock_path
    text = path.read_text()
    return Lock(path=path, text=text, header=read_header(text, path),
                entries=tuple(_entries(text, path)))


# A pin with neither extras nor a marker, as the resolvers write most: a PEP 508 name and a
# PEP 440 version in normal form, which packaging reads to the same name and version (so
# it is imported only for a line that is not one)
_PIN = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(\d+(?:\.\d+)*"
                  r"(?:(?:a|b|rc)\d+)?(?:\.post\d+)?(?:\.dev\d+)?(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?)")
_SEPARATORS = re.compile(r"[-_.]+")   # PEP 503 normalization: packaging's canonicalize_name


def _entries(text: str, path: Path) -> list[LockEntry]:
    """Requirement lines of pip-compile output: `name==version [; marker] --hash=...`."""
    entries: list[LockEntry] = []
    for number, line in _logical_lines(text):
        parts = line.split(" --hash=")
        pin = _PIN.fullmatch(parts[0].strip())
        if pin is not None and len(parts) >= 2:
            name, version, marker = _SEPARATORS.sub("-", pin[1]).lower(), pin[2], None
        else:
            name, version, marker = _requirement(line, parts, f"{path}: line {number}")
        entries.append(LockEntry(name=name, version=version, marker=marker,
                                 hashes=tuple(h.strip() for h in parts[1:])))
    return entries


def _requirement(line: str, parts: list[str], where: str) -> tuple[str, str, Marker | None]:
    """A lock line's name, pinned version and marker, as packaging reads them."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        req = Requirement(parts[0].strip())
    except InvalidRequirement as exc:
        raise LockError(f"{where}: not a requirement: {exc}") from None
    pins = [s for s in req.specifier if s.operator == "=="]
    if len(pins) != 1 or len(parts) < 2:
        raise LockError(f"{where}: expected 'name==version --hash=sha256:...', "
                        f"found {line[:80]!r}; re-run `envbuild lock`")
    return canonicalize_name(req.name), pins[0].version, req.marker


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        buf += line.strip()
        if buf:
            out.append((start, buf))
        buf = ""
    return out


def redact_url(url: str) -> str:
    """The URL with any user:password@ removed: locks are committed and shared."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def resolver_for(name: str, target: Target, store_dir: Path | None = None) -> Resolver:
    """The resolver `name` (`--resolver`, else the recipe's [lock] resolver) for `target`;
    uv's cache is in the store."""
    if name == "uv":
        from .resolve_uv import UvResolver

        return UvResolver(target.runner, store_dir)
    return PipToolsResolver(target.runner)


def resolver_name(given: str | None, recipe: Recipe) -> str:
    """`--resolver` if given (checked), else the recipe's [lock] resolver."""
    if given is None:
        return recipe.resolver
    if given not in RESOLVERS:
        raise UsageError(f"--resolver: expected one of {', '.join(RESOLVERS)}, found {given!r}",
                         "usage: envbuild lock RECIPE [--resolver pip-tools|uv]")
    return given
