"""The recipe: a small TOML file naming what goes into an environment, validated in full."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from .errors import InputError, RecipeError
from .memo import by_packaging

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPI_SIMPLE = "https://pypi.org/simple"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# what a launch removes whatever the recipe says: each changes what the interpreter reads at
# start (PYTHONPYCACHEPREFIX: pycs from another tree; PYTHONPLATLIBDIR: another lib-dynload)
ALWAYS_UNSET = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                "PYTHONPYCACHEPREFIX", "PYTHONPLATLIBDIR")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_TABLES: dict[str, set[str]] = {
    "": {"name", "requires-python", "dependencies", "index", "environment", "launch", "image",
         "host", "lock"},
    "index": {"url", "find-links"},
    "environment": {"set", "require", "unset"},
    "launch": {"hook", "root", "record-environment"},
    "image": {"base", "user", "entrypoint"},
    "host": {"optional"},
    "lock": {"resolver"},
}
RESOLVERS = ("pip-tools", "uv")


class EnvContract(NamedTuple):
    """What a launch does to the environment: defaults, requirements, removals."""

    set: Mapping[str, str] = MappingProxyType({})
    require: tuple[str, ...] = ()
    unset: tuple[str, ...] = ALWAYS_UNSET

    def to_json(self) -> dict[str, Any]:
        return {"set": dict(sorted(self.set.items())), "require": sorted(self.require),
                "unset": sorted(self.unset)}


class Recipe(NamedTuple):
    path: Path
    digest: str                # of the recipe's meaning: see `meaning_digest`
    name: str
    requires_python: str       # a PEP 440 specifier set, as written ("": any Python)
    dependencies: tuple[str, ...]
    index_url: str
    find_links: tuple[Path, ...]
    environment: EnvContract
    launch_hook: bool = False
    launch_root: str = "warn"
    launch_record: str = "values"   # [launch] record-environment: what run records keep
    host_optional: tuple[str, ...] = ()   # [host] optional: host libraries that only warn
    find_links_as_written: tuple[str, ...] = ()   # what the lock header records
    image: Mapping[str, Any] = MappingProxyType({})
    bytes_digest: str = ""     # of the file's bytes: what locks before envbuild.build/2 record
    resolver: str = "pip-tools"   # [lock] resolver: what `envbuild lock` resolves with

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def check_python(self, version: str, found: str, fix: str) -> None:
        """Refuse an interpreter outside requires-python (lock and build share this)."""
        spec = self.requires_python

        def answer() -> str:
            return "in" if _specifiers(spec).contains(version, prereleases=True) else "out"

        if by_packaging("requires-python", [spec, version], answer, "in") != "in":
            raise InputError(f"{self.path}: requires-python: expected an interpreter "
                             f"matching '{_specifiers(spec)}', found {found}; {fix}")


def _specifiers(spec: str) -> Any:
    """packaging's `SpecifierSet` of `spec` (its module imported here: see `memo`)."""
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(spec)


def _sound_specifiers(spec: str) -> str:
    from packaging.specifiers import InvalidSpecifier

    try:
        _specifiers(spec)
    except InvalidSpecifier:
        return "unsound"
    return "sound"


def _check_requirements(deps: list[Any], where: Callable[[], str], issues: list[str]) -> None:
    """packaging's reading of each dependency: its problems added to `issues`, each after
    `where()` (asked only then: it searches the recipe's text). Where every dependency is a
    string, a sound list is remembered (`memo.by_packaging`)."""
    problems: list[str] = []

    def answer() -> str:
        problems.extend(_requirement_problems(deps))
        return "unsound" if problems else "sound"

    if all(isinstance(dep, str) for dep in deps):
        by_packaging("requirements", deps, answer, "sound")
    else:
        answer()
    issues += [f"{where()}: {problem}" for problem in problems]


def _requirement_problems(deps: list[Any]) -> list[str]:
    """What is wrong with `deps` as PEP 508 requirements."""
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    for dep in deps:
        try:
            if not isinstance(dep, str):
                raise InvalidRequirement(repr(dep))
            if Requirement(dep).url:
                problems.append(f"{dep!r}: direct URLs cannot be hash-locked from an index; "
                                "publish it to an index or find-links")
        except InvalidRequirement as exc:
            problems.append(f"not a PEP 508 requirement: {dep!r} ({exc})")
    return problems


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe; raise RecipeError listing every problem found."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(path, ["no such file: expected a recipe TOML file"]) from None
    except OSError as exc:
        raise RecipeError(path, [f"cannot read: {exc.strerror}"]) from None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(path, [f"not valid TOML: {exc}"]) from None
    issues: list[str] = []
    recipe = _validate(path, raw, text, data, issues)
    if issues or recipe is None:
        raise RecipeError(path, issues)
    return recipe


def _validate(path: Path, raw: bytes, text: str, data: dict[str, Any],
              issues: list[str]) -> Recipe | None:
    def where(table: str, key: str) -> str:
        line = _line_of(text, table, key)
        dotted = f"{table}.{key}" if table else key
        return f"line {line}: {dotted}" if line else dotted

    for table, allowed in _TABLES.items():
        section = data if not table else data.get(table, {})
        if not isinstance(section, dict):
            issues.append(f"{where('', table)}: expected a table, found {type(section).__name__}")
            continue
        for key in section:
            if key not in allowed:
                issues.append(f"{where(table, key)}: unknown key (allowed: "
                              f"{', '.join(sorted(allowed))})")

    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        issues.append(f"{where('', 'name')}: expected a name matching [a-z0-9][a-z0-9._-]*, "
                      f"found {name!r}")
    requires_python = data.get("requires-python", "")
    if not isinstance(requires_python, str) or by_packaging(
            "requires-python", requires_python,
            lambda: _sound_specifiers(requires_python), "sound") != "sound":
        issues.append(f"{where('', 'requires-python')}: expected a PEP 440 specifier such as "
                      f"'>=3.11,<3.12', found {requires_python!r}")
    deps = data.get("dependencies")
    if not isinstance(deps, list) or not deps:
        issues.append(f"{where('', 'dependencies')}: expected a non-empty list of PEP 508 "
                      f"requirements, found {deps!r}")
        deps = []
    _check_requirements(deps, lambda: where("", "dependencies"), issues)

    index = data.get("index", {}) if isinstance(data.get("index", {}), dict) else {}
    index_url = index.get("url", os.environ.get("ENVBUILD_INDEX_URL") or PYPI_SIMPLE)
    if not isinstance(index_url, str) or not re.match(r"^(https?|file)://", index_url):
        issues.append(f"{where('index', 'url')}: expected an http(s):// or file:// URL, "
                      f"found {index_url!r}")
    links = index.get("find-links", [])
    if not isinstance(links, list) or not all(isinstance(x, str) for x in links):
        issues.append(f"{where('index', 'find-links')}: expected a list of paths, found {links!r}")
        links = []
    find_links = tuple((path.parent / x).resolve() for x in links)

    contract = _contract(data.get("environment", {}), where, issues)
    launch = data.get("launch", {}) if isinstance(data.get("launch", {}), dict) else {}
    hook = launch.get("hook", False)
    if not isinstance(hook, bool):
        issues.append(f"{where('launch', 'hook')}: expected true or false, found {hook!r}")
    root = launch.get("root", "warn")
    if root not in ("warn", "refuse", "allow"):
        issues.append(f"{where('launch', 'root')}: expected \"warn\", \"refuse\" or \"allow\", "
                      f"found {root!r}")
    record = launch.get("record-environment", "values")
    if record not in ("values", "names"):
        issues.append(f"{where('launch', 'record-environment')}: expected \"values\" or "
                      f"\"names\", found {record!r}")
    host = data.get("host", {}) if isinstance(data.get("host", {}), dict) else {}
    optional = host.get("optional", [])
    if not isinstance(optional, list) or not all(isinstance(x, str) and x for x in optional):
        issues.append(f"{where('host', 'optional')}: expected a list of sonames such as "
                      f"\"libcuda.so.1\", found {optional!r}")
        optional = []
    image = data.get("image", {}) if isinstance(data.get("image", {}), dict) else {}
    entry = image.get("entrypoint")
    if entry is not None and not (isinstance(entry, list)
                                  and all(isinstance(x, str) for x in entry)):
        issues.append(f"{where('image', 'entrypoint')}: expected a list of strings")
    for key in ("base", "user"):
        if key in image and not isinstance(image[key], str):
            issues.append(f"{where('image', key)}: expected a string, found {image[key]!r}")
    resolver = _resolver(data.get("lock", {}), where, issues)
    if issues:
        return None
    return Recipe(path=path.resolve(), digest=meaning_digest(data),
                  bytes_digest="sha256:" + hashlib.sha256(raw).hexdigest(),
                  name=str(name), requires_python=requires_python,
                  dependencies=tuple(str(d) for d in deps), index_url=str(index_url),
                  find_links=find_links, find_links_as_written=tuple(links),
                  environment=contract, launch_hook=bool(hook),
                  launch_root=str(root), launch_record=str(record), image=dict(image),
                  host_optional=tuple(sorted(set(optional))), resolver=str(resolver))


def meaning_digest(data: dict[str, Any]) -> str:
    """The digest of a recipe's meaning: the parsed TOML as written (before defaults such
    as $ENVBUILD_INDEX_URL), as canonical JSON. Comments, whitespace, quoting and key order
    change nothing; any value that changes does."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_toml_scalar)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _toml_scalar(value: object) -> str:
    """TOML's dates and times, which JSON has no type for, in their ISO form."""
    iso = getattr(value, "isoformat", None)
    if iso is None:
        raise TypeError(f"cannot encode {type(value).__name__}")
    return f"{type(value).__name__}:{iso()}"


def _resolver(lock: Any, where: Any, issues: list[str]) -> str:
    """[lock] resolver: which resolver `envbuild lock` uses unless --resolver says."""
    resolver = lock.get("resolver", RESOLVERS[0]) if isinstance(lock, dict) else RESOLVERS[0]
    if resolver not in RESOLVERS:
        issues.append(f"{where('lock', 'resolver')}: expected \"pip-tools\" or \"uv\", "
                      f"found {resolver!r}")
        return RESOLVERS[0]
    return str(resolver)


def _contract(env: Any, where: Any, issues: list[str]) -> EnvContract:
    if not isinstance(env, dict):
        return EnvContract()
    defaults = env.get("set", {})
    if not isinstance(defaults, dict) or not all(isinstance(v, str) for v in defaults.values()):
        issues.append(f"{where('environment', 'set')}: expected a table of "
                      'NAME = "value" strings')
        defaults = {}
    names: dict[str, list[str]] = {}
    for key in ("require", "unset"):
        value = env.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            issues.append(f"{where('environment', key)}: expected a list of variable names")
            value = []
        names[key] = value
    for key, variables in (("set", list(defaults)), ("require", names["require"]),
                           ("unset", names["unset"])):
        for var in variables:
            if not ENV_NAME_RE.match(var):
                issues.append(f"{where('environment', key)}: expected a variable name "
                              f"([A-Za-z_][A-Za-z0-9_]*), found {var!r}")
    unset = tuple(sorted(set(ALWAYS_UNSET) | set(names["unset"])))
    return EnvContract(set=dict(defaults), require=tuple(names["require"]), unset=unset)


def _line_of(text: str, table: str, key: str) -> int | None:
    """Line number of `key` in `[table]` (top level if empty), to point the user at it."""
    current = ""
    key_re = re.compile(rf'^\s*"?{re.escape(key)}"?\s*[=.]')
    # `table.key = ...` or `table = { ..., key = ... }` written at the top level
    dotted_re = re.compile(rf'^\s*"?{re.escape(table)}"?\s*(\.\s*"?{re.escape(key)}"?\s*[=.]'
                           rf'|=\s*{{.*\b{re.escape(key)}\s*=)')
    header_re = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    for number, line in enumerate(text.splitlines(), 1):
        header = header_re.match(line)
        if header:
            current = header.group(1).strip('"')
            if not table and current == key:
                return number
            continue
        if current == table and key_re.match(line):
            return number
        if table and current == "" and dotted_re.match(line):
            return number
    return None
