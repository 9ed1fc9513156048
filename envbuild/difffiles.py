"""`envbuild diff --files`: file-level changes between two trees, grouped by the
distribution that owns each file (its RECORD says so; a pyc belongs to its source's owner).

A tree is the env's files sidecar (what was built) with what the env on this machine no
longer matches (the files level of verify: sizes, modes, kinds, added and missing paths)
laid over it, so an edit after the build shows too. An image's tree is its sidecar, read
from inside it. A run record or report has no tree: it takes the other side's, when both
name the same manifest, with the paths its own verification found changed.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath

from .diffinputs import Side, image_files_sidecar
from .errors import InputError
from .layout import FILES, MANIFEST
from .sidecars import parse_dist_info, read_files
from .verify import Difference, trusted_owners

ABSENT = "absent"
OTHERS = "(no distribution)"
Entry = str        # what a path is, as compared: "sha256:HEX mode 0644", "link sha256:HEX", ...


def file_changes(a: Side, b: Side) -> list[tuple[str, list[Difference]]]:
    """[(owner, its differences)], owners sorted (files of no distribution last)."""
    ta, tb = _tree(a, b), _tree(b, a)
    owners = {**_owners(b), **_owners(a)}
    grouped: dict[str, list[Difference]] = {}
    for rel in sorted(ta.keys() | tb.keys()):
        x, y = ta.get(rel, ABSENT), tb.get(rel, ABSENT)
        if x == y:
            continue
        kind = "added" if x == ABSENT else "missing" if y == ABSENT else (
            "permissions" if x.split(" mode ")[0] == y.split(" mode ")[0] else "modified")
        grouped.setdefault(_owner(rel, owners), []).append(Difference(kind, rel, x, y))
    return sorted(grouped.items(), key=lambda item: (item[0] == OTHERS, item[0]))


def _tree(side: Side, other: Side) -> dict[str, Entry]:
    if side.env_dir is not None:
        return _env_tree(side.env_dir)
    if side.image is not None:
        return _listing(image_files_sidecar(side.image).decode("utf-8"), side.label)
    if other.digest == side.digest and (other.env_dir or other.image):
        base = _tree(other, side)
        for d in side.observed or []:
            if d.subject in base or d.kind == "added":
                base[d.subject] = ABSENT if d.kind == "missing" else f"{d.found} (found)"
        return base
    raise InputError(f"--files: {side.label}: expected an env, a staged pointer or "
                     "docker://IMAGE (or a record or report of the same manifest as the "
                     "other side), found no tree to compare")


def _listing(text: str, where: str) -> dict[str, Entry]:
    try:
        recorded = read_files(text)
    except ValueError as exc:
        raise InputError(f"{where}: {FILES}: {exc}") from None
    return {rel: (f"sha256:{digest} mode {mode:04o}" if kind == "f" else f"link sha256:{digest}")
            for rel, (kind, mode, _size, digest) in recorded.items()}


def _env_tree(env: str) -> dict[str, Entry]:
    """The sidecar's tree, with what the env no longer matches laid over it."""
    from .verify_files import check_files

    try:
        with open(os.path.join(env, FILES), encoding="utf-8") as fh:
            tree = _listing(fh.read(), env)
        with open(os.path.join(env, MANIFEST), "rb") as fh:
            manifest = fh.read()
    except OSError as exc:
        raise InputError(f"{env}: cannot read {FILES}: {exc.strerror}") from None
    drift: list[Difference] = []
    check_files(env, manifest, False, trusted_owners(env, ()), drift)
    for d in drift:
        if d.kind == "missing":
            tree[d.subject] = ABSENT
        elif d.kind == "added":
            tree[d.subject] = "present (added after the build)"
        elif d.subject in tree and d.kind == "permissions" and d.found.startswith("mode "):
            tree[d.subject] = tree[d.subject].split(" mode ")[0] + " " + d.found
        elif d.subject in tree:
            tree[d.subject] = f"{d.found} (changed after the build)"
    return tree


def _owners(side: Side) -> dict[str, str]:
    """{env-relative path: distribution} from every RECORD of a local env."""
    env = side.env_dir
    if env is None:
        return {}
    owners: dict[str, str] = {}
    for site in _site_dirs(env):
        for entry in sorted(os.listdir(os.path.join(env, site))):
            parsed = parse_dist_info(entry)
            if parsed is None:
                continue
            try:
                with open(os.path.join(env, site, entry, "RECORD"), encoding="utf-8") as fh:
                    rows = list(csv.reader(io.StringIO(fh.read())))
            except OSError:
                continue
            for row in rows:
                if row:
                    owners[posixpath.normpath(posixpath.join(site, row[0]))] = parsed[0]
    return owners


def _site_dirs(env: str) -> list[str]:
    try:
        names = sorted(os.listdir(os.path.join(env, "lib")))
    except OSError:
        return []
    return [f"lib/{n}/site-packages" for n in names
            if os.path.isdir(os.path.join(env, "lib", n, "site-packages"))]


def _owner(rel: str, owners: dict[str, str]) -> str:
    if rel in owners:
        return owners[rel]
    folder, name = posixpath.split(rel)
    if posixpath.basename(folder) == "__pycache__" and name.endswith(".pyc"):
        source = posixpath.join(posixpath.dirname(folder), name.split(".", 1)[0] + ".py")
        if source in owners:
            return owners[source]
    for part in rel.split("/"):
        parsed = parse_dist_info(part)
        if parsed:
            return parsed[0]
    return OTHERS
