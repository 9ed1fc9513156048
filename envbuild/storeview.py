"""What a store holds, for people: its envs (`envbuild list`) and one env's manifest in human
form (`envbuild show`). Reads only; nothing here changes the store.

An env's row: its name and key, the recipe it was built from and when (its provenance), its
size on disk, its last use (the mtime of `used/<name>-<key>`, see `layout.usage_mark`), and
whether it is damaged: moved aside by a build (`envs/.damaged-*`, `.replaced-*`) or by an
interrupted gc (`.removed-*`), or differing from its manifest at the quick level.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, NotAnEnvError
from .layout import FILES, MANIFEST, PROVENANCE, StoreLayout, store_root

ASIDE = ("damaged", "replaced", "removed")   # envs/.<why>-<name>-<key>-<utc>/
TMP = "tmp"                                  # envs/.tmp-<name>-<key>-<random>/, a build's
_NOT_DAMAGE = ("host", "environment")        # this host's and caller's, not the env's


def open_store(explicit: Path | None = None) -> StoreLayout:
    """The store `explicit` (else $ENVBUILD_STORE, else the user cache dir) names; never
    created: InputError if there is none."""
    root = store_root(explicit)
    if not os.path.isdir(root):
        what = "nothing" if not os.path.lexists(root) else "a file"
        raise InputError(f"store: expected an envbuild store at {root}, found {what}; pass "
                         "--store DIR (or set ENVBUILD_STORE) naming the store `envbuild build` "
                         "filled")
    layout = StoreLayout(root)
    if not os.path.isdir(layout.envs):
        raise InputError(f"store: expected an envbuild store (with envs/) at {root}, found a "
                         "directory without envs/; pass --store DIR naming the store "
                         "`envbuild build` filled")
    return layout


@dataclass(frozen=True)
class EnvRow:
    name: str
    key: str                     # the 16 hex digits of the directory's name
    path: Path
    recipe: str | None
    size_bytes: int
    built_utc: str | None
    last_used_utc: str | None
    damaged: bool
    aside: str | None = None     # "damaged", "replaced", "removed": moved aside, not an env

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "path": str(self.path),
                "recipe": self.recipe, "size_bytes": self.size_bytes,
                "built_utc": self.built_utc, "last_used_utc": self.last_used_utc,
                "damaged": self.damaged}


def parse_entry(dir_name: str) -> tuple[str, str, str] | None:
    """(kind, name, key) of an entry of `envs/`: kind "env", one of ASIDE, or TMP; None for
    anything else."""
    if not dir_name.startswith("."):
        name, sep, key = dir_name.rpartition("-")
        return ("env", name, key) if sep and name and _is_key(key) else None
    why, sep, rest = dir_name[1:].partition("-")
    if not sep or (why not in ASIDE and why != TMP):
        return None
    parts = rest.rsplit("-", 2)     # <name>-<key>-<utc or mkdtemp's random part>
    if len(parts) != 3 or not parts[0] or not _is_key(parts[1]):
        return None
    return why, parts[0], parts[1]


def _is_key(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


def list_envs(store: StoreLayout) -> list[EnvRow]:
    """One row per env and per aside dir of `envs/`, by name then build time; build dirs in
    progress are left out."""
    rows = []
    for entry in sorted(os.listdir(store.envs)):
        parsed = parse_entry(entry)
        path = Path(store.envs) / entry
        if parsed is None or parsed[0] == TMP or not path.is_dir() or path.is_symlink():
            continue
        kind, name, key = parsed
        aside = None if kind == "env" else kind
        prov = provenance(path)
        rows.append(EnvRow(name, key, path, prov.get("recipe"), tree_size(path),
                           prov.get("built_utc") or _mtime_utc(path / MANIFEST),
                           None if aside else _mtime_utc(Path(store.used_mark(entry))),
                           bool(aside) or bool(damage(path)), aside))
    return sorted(rows, key=lambda r: (r.name, r.aside is not None, r.built_utc or "", r.key))


def damage(env: Path) -> list[str]:
    """The quick level's differences that a new build would repair (none: intact)."""
    from .verify import verify

    try:
        report = verify(str(env), level="quick", contract=False)
    except NotAnEnvError as exc:
        return [str(exc)]
    return [d.line() for d in report.differences if d.kind not in _NOT_DAMAGE]


def provenance(env: Path) -> dict[str, str]:
    """The env's provenance (built_utc, host, user, envbuild_version, recipe) as far as it
    can be read; absent keys are missing."""
    try:
        raw = json.loads((env / PROVENANCE).read_bytes())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in raw.items() if v is not None} if isinstance(raw, dict) else {}


def tree_size(root: Path) -> int:
    """Bytes on disk under `root` (st_blocks * 512, the root included, a file with several
    links counted once): what `du -s -B1` says, and what removing it frees."""
    seen: set[tuple[int, int]] = set()
    try:
        st = os.lstat(root)
    except OSError:
        return 0
    total = st.st_blocks * 512
    todo = [str(root)] if stat.S_ISDIR(st.st_mode) else []
    while todo:
        try:
            it = os.scandir(todo.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    todo.append(entry.path)
    return total


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _mtime_utc(path: Path) -> str | None:
    try:
        return utc(path.stat().st_mtime)
    except OSError:
        return None


def human_size(size: int) -> str:
    """`512 B`, `1.5 KiB`, `123.4 MiB`, `2.0 GiB`."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def table(rows: list[EnvRow]) -> list[str]:
    """The rows as an aligned table with a header, then a total."""
    head = ("NAME", "KEY", "SIZE", "BUILT (UTC)", "LAST USED (UTC)", "DAMAGED", "RECIPE")
    cells = [head] + [(r.name, r.key, human_size(r.size_bytes), _short(r.built_utc),
                       _short(r.last_used_utc),
                       f"aside ({r.aside})" if r.aside else ("yes" if r.damaged else "no"),
                       r.recipe or "-") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i == 2 else c[i].ljust(widths[i])
                       for i in range(len(head))).rstrip() for c in cells]
    damaged = sum(r.damaged for r in rows)
    lines.append(f"{len(rows)} env{'s' if len(rows) != 1 else ''}, "
                 f"{human_size(sum(r.size_bytes for r in rows))}"
                 + (f"; {damaged} damaged (`envbuild gc` removes those moved aside)"
                    if damaged else ""))
    return lines


def _short(stamp: str | None) -> str:
    return stamp.replace("T", " ").rstrip("Z") if stamp else "-"


# ---- show --------------------------------------------------------------------------------


def find_env(what: str, store_dir: Path | None = None) -> Path:
    """The env `what` names: a path to an env, or NAME, the newest env of that name in the
    store (by build time). A directory with a manifest wins over a name."""
    path = Path(what)
    if "/" in what or what in (".", "..") or (path / MANIFEST).is_file():
        if not (path / MANIFEST).is_file():
            raise NotAnEnvError(f"ENV: expected an env (a directory with {MANIFEST}), found "
                                f"{_found(path)}; pass the path `envbuild build` printed, or "
                                "a name from `envbuild list`")
        return path.absolute()
    store = open_store(store_dir)
    rows = [r for r in list_envs_light(store) if r[0] == what]
    if not rows:
        names = sorted({r[0] for r in list_envs_light(store)})
        raise InputError(f"ENV: expected an env path or the name of an env in the store "
                         f"{store.root}, found {what!r}: no env of that name there (names: "
                         f"{', '.join(names) or 'none'}); pass the env's path, or see "
                         "`envbuild list`")
    return max(rows, key=lambda r: (r[1], r[2].name))[2]


def list_envs_light(store: StoreLayout) -> list[tuple[str, str, Path]]:
    """(name, built_utc, path) of every env of the store with a manifest: no sizes, no
    verification."""
    out = []
    for entry in os.listdir(store.envs):
        parsed = parse_entry(entry)
        path = Path(store.envs) / entry
        if parsed and parsed[0] == "env" and (path / MANIFEST).is_file():
            built = provenance(path).get("built_utc") or _mtime_utc(path / MANIFEST) or ""
            out.append((parsed[1], built, path))
    return out


def _found(path: Path) -> str:
    if not path.exists():
        return f"nothing at {path}"
    return f"{path}, {'a directory without one' if path.is_dir() else 'not a directory'}"


def describe(env: Path) -> list[str]:
    """The manifest of the env at `env` in human form, one fact a line."""
    from .manifest import read_manifest
    from .sidecars import FILES_SCHEMA

    m = read_manifest(env)
    prov = provenance(env)
    interp = m.interpreter
    lines = [f"name: {m.name}", f"path: {env}", f"key: {m.env_key}",
             f"manifest digest: {m.digest}",
             f"built: {prov.get('built_utc', '-')} by {prov.get('user', '-')}@"
             f"{prov.get('host', '-')} with envbuild {prov.get('envbuild_version', '-')}",
             f"recipe: {prov.get('recipe', '-')} ({m.inputs.get('recipe', '-')})",
             f"lock: {m.inputs.get('lock', '-')}",
             f"interpreter: {interp.implementation} {interp.version} at {interp.path}",
             f"  abi {interp.abi}, platform {interp.platform}, libc {interp.libc}",
             f"  sha256 {interp.sha256}"]
    if interp.libpython:
        lines.append(f"  libpython {interp.libpython.get('path')}")
    lines.append(f"distributions: {len(m.distributions)}")
    lines += [f"  {d.name} {d.version}  {d.artifact}" for d in m.distributions]
    lines += _host_lines(m.host.libraries, m.host.versions, m.host.glibc, m.host_optional)
    contract = m.environment
    lines.append("environment:" + ("" if contract.set or contract.require or contract.unset
                                   else " nothing set, required or unset"))
    lines += [f"  set {k}={v} (when unset)" for k, v in sorted(contract.set.items())]
    lines += [f"  require {k}" for k in contract.require]
    lines += [f"  unset {k}" for k in contract.unset]
    lines.append(f"launch: hook {'on' if m.launch.hook else 'off'}, root {m.launch.root}, "
                 f"run records keep {m.launch.record_environment}")
    lines.append(f"tree digest: {m.tree_digest}")
    try:
        count = sum(1 for line in (env / FILES).read_text().splitlines()
                    if line and line != FILES_SCHEMA)
        lines.append(f"files: {count}")
    except OSError as exc:
        lines.append(f"files: unknown ({FILES}: {exc.strerror})")
    return lines


def _host_lines(libraries: Mapping[str, list[str]],
                versions: Mapping[str, Mapping[str, list[str]]],
                glibc: str | None, optional: tuple[str, ...]) -> list[str]:
    lines = [f"host needs: {len(libraries)} libraries"
             + (f", glibc >= {glibc}" if glibc else "")]
    for soname in sorted(libraries):
        wanted = sorted(versions.get(soname, {}))
        lines.append(f"  {soname}{' (optional)' if soname in optional else ''}: needed by "
                     f"{len(libraries[soname])} files"
                     + (f"; versions {', '.join(wanted)}" if wanted else ""))
    return lines
