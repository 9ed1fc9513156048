"""The manifest: exactly what an env holds, in canonical JSON, and its two sidecars.

The manifest's digest names the env. Nothing that varies between builds of the same
inputs goes in it; provenance lives in `.envbuild/provenance.json`, outside every digest.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BuildError, InputError
from .fsutil import atomic_write
from .hostreq import HostNeeds
from .verify import (
    FILES,
    FILES_SCHEMA,
    MANIFEST,
    META,
    QUICK,
    files_line,
    format_quick,
    sha256_bytes,
    walk,
)

SCHEMA = "envbuild.manifest/1"


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def read_manifest(env: Path) -> dict[str, Any]:
    path = env / MANIFEST
    data: dict[str, Any] = json.loads(path.read_bytes())
    schema = data.get("schema")
    if schema != SCHEMA:
        raise InputError(f"{path}: manifest schema {schema!r} is not {SCHEMA!r}; "
                         "this envbuild cannot read it (upgrade envbuild)")
    return data


@dataclass(frozen=True)
class TreeListing:
    sidecar: bytes            # the `files` sidecar; its digest is the tree digest
    regular: list[str]        # relative paths of regular files, for the host scan


def list_tree(root: Path, forbidden: bytes) -> TreeListing:
    """Hash every file; refuse a tree in which any file still holds `forbidden` (the build
    dir's absolute path): such an env would break when moved."""
    lines = [FILES_SCHEMA + "\n"]
    regular: list[str] = []
    leaks: list[str] = []
    for rel, st in sorted(walk(str(root)).items()):
        if "\n" in rel or "\t" in rel:
            raise BuildError(f"{rel!r}: file names with tabs or newlines are not supported")
        if stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(root / rel))
            if forbidden in target:
                leaks.append(rel)
            lines.append(files_line("l", 0, len(target), hashlib.sha256(target).hexdigest(),
                                    rel))
        elif stat.S_ISREG(st.st_mode):
            data = (root / rel).read_bytes()
            if forbidden in data:
                leaks.append(rel)
            lines.append(files_line("f", stat.S_IMODE(st.st_mode), len(data),
                                    hashlib.sha256(data).hexdigest(), rel))
            regular.append(rel)
    if leaks:
        raise BuildError("the env is not relocatable: these files hold the build directory's "
                         "path: " + ", ".join(leaks[:10]))
    return TreeListing("".join(lines).encode("utf-8"), regular)


def quick_records(site: str, root: Path, interp: dict[str, Any], host: HostNeeds,
                  environment: dict[str, Any], launch: dict[str, Any],
                  stdlib_landmark: str | None = None) -> list[tuple[str, ...]]:
    records: list[tuple[str, ...]] = [
        ("python", "bin/python", interp["path"], interp["sha256"], interp["version"]),
        ("site", site),
    ]
    if interp["libpython"]:
        records.append(("pylib", interp["libpython"]["path"], interp["libpython"]["sha256"]))
    if stdlib_landmark:   # without its stdlib the interpreter cannot even start
        records.append(("pystdlib", stdlib_landmark))
    for name in sorted(os.listdir(root / site)):
        if name.endswith((".dist-info", ".pth")):
            records.append(("entry", name))
    if host.glibc:
        records.append(("glibc", host.glibc))
    records += [("lib", soname) for soname in sorted(host.libraries)]
    records += [("set", k, v) for k, v in sorted(environment["set"].items())]
    records += [("require", k) for k in environment["require"]]
    records += [("unset", k) for k in environment["unset"]]
    records += [("hook", "1" if launch["hook"] else "0"), ("root", launch["root"])]
    return records


def seal(root: Path, body: dict[str, Any], site: str, forbidden: bytes,
         host_scan: Any, stdlib_landmark: str | None = None) -> str:
    """Write the sidecars and the manifest into `root`; return the manifest's digest.

    `body` holds every manifest key but the digests computed here.
    """
    (root / META).mkdir(exist_ok=True)
    listing = list_tree(root, forbidden)
    host: HostNeeds = host_scan(root, listing.regular)
    quick = format_quick(quick_records(site, root, body["interpreter"], host,
                                       body["environment"], body["launch"],
                                       stdlib_landmark)).encode("utf-8")
    manifest = dict(body, tree_digest=sha256_bytes(listing.sidecar), host=host.to_json(),
                    sidecars={"quick": sha256_bytes(quick)})
    data = canonical(manifest)
    atomic_write(root / FILES, listing.sidecar, mode=0o444)
    atomic_write(root / QUICK, quick, mode=0o444)
    atomic_write(root / META / "provenance.json", canonical({
        "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(), "user": getpass.getuser(),
        "envbuild_version": __version__}), mode=0o444)
    atomic_write(root / MANIFEST, data, mode=0o444)
    return sha256_bytes(data)
