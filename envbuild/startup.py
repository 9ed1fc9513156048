"""What CPython reads and runs before a program's first line, asked of the new env's own
interpreter at build time: the directories on `sys.path` at start, the files its startup
imports come from (sources and pycs, in the env and in the base interpreter's stdlib), and
the names those imports go by. The quick level holds the env to this (see `verify`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from .fsutil import atomic_write
from .hashing import file_digest, sha256_bytes
from .layout import digest_hex
from .proc import hermetic_env, run_tool
from .sidecars import startup_dir

# Runs as `ENV/bin/python -c`, with `site`, as a program started in the env would. Nothing
# is imported before the snapshot (sys is built in).
_PROBE = r"""
import sys
mods, path = list(sys.modules.items()), list(sys.path)
import json, os
files = set()
for name, mod in mods:
    spec = getattr(mod, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec is not None else getattr(mod, "__file__", None)
    kind = type(getattr(mod, "__loader__", None)).__name__
    if not origin or origin in ("built-in", "frozen") or "Frozen" in kind or "Builtin" in kind:
        continue
    for f in (origin, getattr(spec, "cached", None)):
        if f and os.path.isfile(f):
            files.add(os.path.abspath(f))
print(json.dumps({"path": [p for p in path if p], "files": sorted(files),
                  "names": sorted({n.split(".")[0] for n, _ in mods})}))
"""
# Imported at start when present: their absence is part of what is checked.
HOOK_NAMES = ("sitecustomize", "usercustomize")


class Startup(NamedTuple):
    # (a sys.path dir but site-packages, env-relative or absolute; dir|file|absent|unreadable;
    # its entries that provide a name the start imports)
    dirs: list[tuple[str, str, list[str]]]
    files: list[tuple[str, str]]             # (env-relative or absolute path, sha256)
    names: list[str]                         # top-level names imported at start


def probe_startup(root: Path, site: str) -> Startup:
    """Ask the env's interpreter (its bytecode compiled, no hook installed yet) what its start
    reads; every file is hashed now, every sys.path dir outside the env listed."""
    out = run_tool([str(root / "bin" / "python"), "-c", _PROBE],
                   env=hermetic_env({"PYTHONDONTWRITEBYTECODE": "1"}), cwd=root)
    info = json.loads(out.strip().splitlines()[-1])
    names = sorted(set(info["names"]) | set(HOOK_NAMES))
    prefix = str(root) + os.sep
    files = []
    for path in info["files"]:
        rel = path[len(prefix):] if path.startswith(prefix) else path
        files.append((rel, file_digest(path)))
    site_dir = str(root / site)
    dirs = [(d[len(prefix):] if d.startswith(prefix) else d, *startup_dir(d, set(names)))
            for d in info["path"] if d != site_dir]
    return Startup(dirs=dirs, files=sorted(set(files)), names=names)


# which probe made a kept answer: another probe, another answer
_PROBE_ID = digest_hex(sha256_bytes(_PROBE.encode()))[:16]


def startup_of(root: Path, site: str, venv: Path) -> Startup:
    """`probe_startup(root, site)`; or, where nothing in the env's site-packages takes part
    in the start (no .pth file, no sitecustomize or usercustomize), that of the store's
    empty venv `venv` the env was copied from: the same interpreter, pyvenv.cfg and
    sys.path, so the same start. That one is probed once and kept beside the venv."""
    if any(name.endswith(".pth") or name.split(".")[0] in HOOK_NAMES
           for name in os.listdir(root / site)):
        return probe_startup(root, site)
    kept = venv.with_name(f"{venv.name}.startup-{_PROBE_ID}.json")
    try:
        data = json.loads(kept.read_bytes())
        return Startup(dirs=[(d, state, list(entries)) for d, state, entries in data["dirs"]],
                       files=[(path, digest) for path, digest in data["files"]],
                       names=list(data["names"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass   # not kept yet, or unreadable: probed again
    found = probe_startup(venv, site)
    try:
        atomic_write(kept, json.dumps(found._asdict(), sort_keys=True))
    except OSError:
        pass   # the next build probes it again
    return found
