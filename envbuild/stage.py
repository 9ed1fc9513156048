"""Shared-disk staging: publish a built env once to a staging root, with its archive, a
pointer per name and a history of generations; list, roll back, collect garbage.

Everything on the shared root is written beside and renamed into place (a new version's
dir, its archive, the pointer, the current-version file, the history), under locks that
hold on network file systems (`store.exclusive`: the owner record linked into place and
read back, a lease, takeover by rename). No `flock` here.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .archive import pack
from .errors import EnvbuildError, InputError
from .fsutil import atomic_write, publish_dir, remove_tree
from .layout import VERSIONS, StagingLayout
from .manifest import read_manifest
from .store import exclusive

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
HISTORY_SCHEMA = "envbuild.stage-history/1"
LEASE_EVERY = 3600.0          # a run renews its node's lease on a version at most hourly


@dataclass(frozen=True)
class Published:
    pointer: Path
    version: str
    version_dir: Path
    manifest_digest: str
    generation: int
    new: bool                 # False: this version was on the root already

    def to_json(self) -> dict[str, Any]:
        return {"pointer": str(self.pointer), "version": self.version,
                "path": str(self.version_dir), "manifest_digest": self.manifest_digest,
                "generation": self.generation, "new": self.new}


def _layout(root: Path) -> StagingLayout:
    if not root.is_dir():
        raise InputError(f"--root: expected a directory (the staging root), found "
                         f"{'a file' if root.exists() else 'nothing'} at {root}")
    layout = StagingLayout(str(root.resolve()))
    for d in (layout.versions, layout.history, layout.locks, layout.leases, layout.tmp,
              layout.trash):
        os.makedirs(d, mode=0o755, exist_ok=True)
    return layout


def publish(env: Path, root: Path, progress: Progress = lambda _m: None) -> Published:
    """Copy ENV to `ROOT/.envs/<name>-<key>/` (full-verified, read-only), pack its archive,
    then point `ROOT/<name>` at it and record the generation."""
    from .verify import verify

    manifest = read_manifest(env)     # NotAnEnvError for what is not an env
    report = verify(str(env), level="files", contract=False)
    if not report.ok:
        raise InputError(f"{env}: expected an env that matches its manifest, found "
                         f"{len(report.differences)} differences, first: "
                         f"{report.differences[0].line()}; build it again")
    layout = _layout(root)
    version = os.path.basename(layout.version_dir(manifest.name, manifest.env_key))
    final = Path(layout.versions) / version
    new = not final.is_dir()
    if new:
        _copy_version(env, final, Path(layout.tmp), manifest.digest, progress)
    if not Path(layout.archive(manifest.name, manifest.env_key)).is_file():
        progress(f"packing {version}.tar")
        pack(final, Path(layout.versions), f"{version}.tar")
    with exclusive(Path(layout.locks) / f"{manifest.name}.lock",
                   on_wait=lambda: progress(f"waiting for another publisher of "
                                            f"{manifest.name}")):
        generation = _point(layout, manifest.name, version, manifest.digest, "publish")
    return Published(Path(layout.pointer(manifest.name)), version, final, manifest.digest,
                     generation, new)


def _copy_version(env: Path, final: Path, tmp_root: Path, digest: str,
                  progress: Progress) -> None:
    """The copy, made beside and renamed into place; another publisher's identical copy
    that got there first wins and ours is discarded."""
    from .verify import verify

    progress(f"copying {env} to {final}")
    work = Path(tempfile.mkdtemp(prefix=f"{final.name}-", dir=tmp_root))
    copy = work / final.name
    try:
        copy_tree(env, copy)
        progress("verifying the copy (full)")
        report = verify(str(copy), level="full", expect=digest, contract=False)
        if not report.ok:
            raise EnvbuildError(f"{copy}: the copy differs from {env}: "
                                + "; ".join(d.line() for d in report.differences[:5]))
        if not publish_dir(copy, final) and not final.is_dir():
            raise EnvbuildError(f"{final}: expected to rename the copy into place, found "
                                "neither it nor another publisher's")
    finally:
        remove_tree(work)


def copy_tree(src: Path, dst: Path) -> None:
    """Files, dirs and symlinks with the files' and dirs' modes and nothing else (a
    network file system may refuse to set a symlink's own times or owner, which no check
    reads); dirs get their modes once their contents are in."""
    os.mkdir(dst, 0o700)
    dirs = [(src, dst)]
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else dst / rel
        for name in sorted(dirnames + filenames):
            s, d = os.path.join(dirpath, name), target / name
            if os.path.islink(s):
                os.symlink(os.readlink(s), d)
            elif os.path.isdir(s):
                os.mkdir(d, 0o700)
                dirs.append((Path(s), d))
            else:
                shutil.copyfile(s, d)
                os.chmod(d, stat.S_IMODE(os.stat(s).st_mode))
    for s_dir, d_dir in reversed(dirs):
        os.chmod(d_dir, stat.S_IMODE(os.stat(s_dir).st_mode))


def _point(layout: StagingLayout, name: str, version: str, digest: str, action: str) -> int:
    """Under the name's lock: the pointer, the current-version file and the history."""
    link = Path(layout.pointer(name))
    if link.exists() and not link.is_symlink():
        raise InputError(f"{link}: expected the pointer of {name} (a symlink), found "
                         "something else there; move it away")
    history = read_history(layout, name)
    generation = (history[-1]["generation"] + 1) if history else 1
    history.append({"generation": generation, "version": version, "manifest_digest": digest,
                    "action": action, "utc": _utc(), "host": socket.gethostname(),
                    "user": getpass.getuser()})
    atomic_write(Path(layout.history_file(name)), json.dumps(
        {"schema": HISTORY_SCHEMA, "name": name, "generations": history}, indent=1,
        sort_keys=True) + "\n")
    atomic_write(Path(layout.current(name)), version + "\n")
    tmp_link = link.with_name(f".{name}.{uuid.uuid4().hex}.link")
    os.symlink(os.path.join(VERSIONS, version), tmp_link)   # relative: the root may move
    os.replace(tmp_link, link)
    return int(generation)


def read_history(layout: StagingLayout, name: str) -> list[dict[str, Any]]:
    path = Path(layout.history_file(name))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise EnvbuildError(f"{path}: expected the history of {name} (JSON), found: "
                            f"{exc}") from None
    if data.get("schema") != HISTORY_SCHEMA:
        raise EnvbuildError(f"{path}: expected schema {HISTORY_SCHEMA}, found "
                            f"{data.get('schema')!r}; upgrade envbuild")
    return list(data["generations"])


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def names(layout: StagingLayout) -> list[str]:
    return sorted(p.name[:-len(".json")] for p in Path(layout.history).glob("*.json"))


def current(layout: StagingLayout, name: str) -> str | None:
    try:
        return Path(layout.current(name)).read_text().strip() or None
    except FileNotFoundError:
        return None


def listing(root: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Every generation of every name (or of `name`), oldest first, marking the current."""
    layout = _layout(root)
    chosen = [name] if name else names(layout)
    out = []
    for n in chosen:
        history = read_history(layout, n)
        if not history:
            raise InputError(f"{n}: expected a name published on {root}, found none")
        now = current(layout, n)
        latest = {h["version"]: h["generation"] for h in history}
        for h in history:
            present = (Path(layout.versions) / h["version"]).is_dir()
            out.append({**h, "name": n, "present": present,
                        "current": h["version"] == now and latest[h["version"]] ==
                        h["generation"]})
    return out


def rollback(name: str, root: Path) -> Published:
    """Point NAME at the version before the current one (which must still be there)."""
    layout = _layout(root)
    with exclusive(Path(layout.locks) / f"{name}.lock"):
        history = read_history(layout, name)
        now = current(layout, name)
        older = [h for h in history if h["version"] != now]
        if not history or not older:
            raise InputError(f"{name}: expected a previous version to roll back to, found "
                             f"{'no history' if not history else 'only the current one'}")
        target = older[-1]
        if not (Path(layout.versions) / target["version"]).is_dir():
            raise InputError(f"{name}: the previous version {target['version']} was "
                             "removed by gc; publish it again")
        generation = _point(layout, name, target["version"], target["manifest_digest"],
                            "rollback")
    return Published(Path(layout.pointer(name)), target["version"],
                     Path(layout.versions) / target["version"], target["manifest_digest"],
                     generation, False)


def gc(root: Path, keep: int = 1, min_age_days: float = 7.0, dry_run: bool = False
       ) -> list[str]:
    """Remove versions that are neither current, nor among the `keep` previous ones of
    their name, nor leased by a run within `min_age_days`: renamed into `.trash/` first
    (under the name's lock), then removed. Returns the versions removed."""
    if keep < 0:
        raise InputError(f"--keep: expected 0 or more, found {keep}")
    layout = _layout(root)
    horizon = time.time() - min_age_days * 86400
    removed = []
    for name in names(layout):
        with exclusive(Path(layout.locks) / f"{name}.lock"):
            history = read_history(layout, name)
            now = current(layout, name)
            order = list(dict.fromkeys(h["version"] for h in reversed(history)
                                       if h["version"] != now))
            for version in order[keep:]:
                if _leased_since(layout, version, horizon):
                    continue
                if not (Path(layout.versions) / version).exists():
                    continue
                removed.append(version)
                if not dry_run:
                    _trash(layout, version)
    for left in Path(layout.tmp).iterdir():       # copies of publishers killed long ago
        if left.stat().st_mtime < time.time() - 86400 and not dry_run:
            remove_tree(left)
    return removed


def _leased_since(layout: StagingLayout, version: str, horizon: float) -> bool:
    folder = Path(layout.leases) / version
    try:
        return any(p.stat().st_mtime >= horizon for p in folder.iterdir())
    except FileNotFoundError:
        return False


def _trash(layout: StagingLayout, version: str) -> None:
    trash = Path(tempfile.mkdtemp(prefix=f"{version}-", dir=layout.trash))
    base = Path(layout.versions) / version
    for path in (base, base.with_name(version + ".tar"),
                 base.with_name(version + ".tar.sha256")):
        if path.exists():
            os.rename(path, trash / path.name)
    remove_tree(trash)


def lease(root: str, version: str) -> None:
    """This node used `version`: renew its lease file at most hourly (gc honours it)."""
    layout = StagingLayout(root)
    path = Path(layout.lease(version, socket.gethostname()))
    try:
        if time.time() - path.stat().st_mtime < LEASE_EVERY:
            return
        os.utime(path)
    except FileNotFoundError:
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.touch()
        except OSError as exc:
            log.warning("cannot leave a lease on %s: %s", path, exc)
    except OSError as exc:
        log.warning("cannot renew the lease %s: %s", path, exc)



def fetch(name: str, root: Path, local: Path | None, bcast: bool = False,
          progress: Progress = lambda _m: None) -> str:
    """The current version of NAME on node-local disk (see `materialize`), or, with
    `bcast`, its archive on every node of the Slurm allocation (`sbcast`)."""
    from .materialize import cache_dir, materialize
    from .proc import run_tool

    layout = StagingLayout(str(root.resolve()))
    version = current(layout, name)
    if version is None:
        raise InputError(f"{name}: expected a name published on {root}, found none")
    cache = cache_dir(str(local) if local else None)
    if cache is None:
        raise InputError("--local: expected a node-local dir (or $ENVBUILD_LOCAL), found none")
    if not bcast:
        progress(f"materializing {version} in {cache}")
        materialize(layout.root, version, cache)
        return version
    if not os.environ.get("SLURM_JOB_ID"):
        raise InputError("--bcast: expected to run inside a Slurm allocation (sbatch or "
                         "salloc), found no SLURM_JOB_ID")
    progress(f"sending {version}.tar to every node's {cache} (sbcast)")
    env = dict(os.environ)
    run_tool(["srun", "--ntasks-per-node=1", "mkdir", "-p", "-m", "0700", cache], env=env)
    run_tool(["sbcast", "--force", os.path.join(layout.versions, version + ".tar"),
              os.path.join(cache, version + ".tar")], env=env)
    return version
