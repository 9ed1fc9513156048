"""The manifest: exactly what an env holds, in canonical JSON, and its two sidecars.

The manifest's digest names the env. Nothing that varies between builds of the same
inputs goes in it; provenance lives in `.envbuild/provenance.json`, outside every digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from . import __version__
from .errors import BuildError, ManifestError
from .fsutil import atomic_write
from .hashing import file_digest, sha256_bytes
from .hostreq import HostNeeds, host_records
from .layout import FILES, MANIFEST, META, PROVENANCE, QUICK
from .recipe import EnvContract
from .sidecars import FILES_SCHEMA, files_line, format_quick, read_manifest_bytes, walk
from .startup import Startup

# A file recorded elsewhere (a store's tree): (mode, size, sha256 hex), by its path in the env.
Known = dict[str, tuple[int, int, str]]


class RecordMismatch(Exception):
    """A file taken from a record differs from it in mode or size (the builder's to
    handle: not one of the errors a user sees)."""

    def __init__(self, rel: str) -> None:
        super().__init__(f"{rel} differs from the record it was taken from")
        self.rel = rel

SCHEMA_PREFIX = "envbuild.manifest/"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_PREFIX}{SCHEMA_VERSION}"


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


class Distribution(NamedTuple):
    name: str           # PEP 503-normalized
    version: str
    artifact: str       # the file the lock hashed: a wheel, or the sdist a wheel was built from
    sha256: str


class InterpreterRecord(NamedTuple):
    implementation: str
    version: str
    abi: str
    platform: str
    libc: str
    path: str
    sha256: str
    stdlib_digest: str
    libpython: dict[str, str] | None    # {path, sha256} of a shared build's libpython


class LaunchPolicy(NamedTuple):
    hook: bool
    root: str
    record_environment: str = "values"   # what run records keep: "values" or "names"


class Manifest(NamedTuple):
    """What an env holds, as `ENV/envbuild-manifest.json` records it."""

    name: str
    env_key: str
    inputs: dict[str, str]              # {recipe, lock}: digests
    interpreter: InterpreterRecord
    distributions: tuple[Distribution, ...]
    environment: EnvContract
    launch: LaunchPolicy
    tree_digest: str = ""               # these three are computed by `seal`
    host: HostNeeds = HostNeeds(MappingProxyType({}), None)
    sidecars: Mapping[str, str] = MappingProxyType({})
    schema: str = SCHEMA
    host_optional: tuple[str, ...] = ()  # [host] optional: needs that warn, not refuse

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "name": self.name, "env_key": self.env_key,
                "inputs": dict(self.inputs), "interpreter": self.interpreter._asdict(),
                "distributions": [d._asdict() for d in self.distributions],
                "tree_digest": self.tree_digest,
                "host": {**self.host.to_json(), "optional": list(self.host_optional)},
                "environment": self.environment.to_json(), "launch": self.launch._asdict(),
                "sidecars": dict(self.sidecars)}

    def to_bytes(self) -> bytes:
        return canonical(self.to_json())

    @property
    def digest(self) -> str:
        """The manifest's own digest, which names the env."""
        return sha256_bytes(self.to_bytes())


def read_manifest(env: Path) -> Manifest:
    """The manifest of the env at `env`, validated; NotAnEnvError (ManifestError) if the env
    has none or it cannot be read, naming every problem."""
    return parse_manifest(read_manifest_bytes(str(env)), str(Path(env) / MANIFEST))


_TOP: dict[str, type] = {"schema": str, "name": str, "env_key": str, "inputs": dict,
                         "interpreter": dict, "distributions": list, "tree_digest": str,
                         "host": dict, "environment": dict, "launch": dict, "sidecars": dict}
_FIELDS: dict[str, tuple[str, ...]] = {
    "inputs": ("recipe", "lock"),
    "interpreter": InterpreterRecord._fields,
    "host": ("libraries", "glibc", "versions"),
    "environment": ("set", "require", "unset"),
    "launch": ("hook", "root", "record_environment"),
    "sidecars": ("quick",),
}


def parse_manifest(data: bytes, where: str) -> Manifest:
    """A manifest from its bytes; ManifestError listing every problem, or refusing a schema
    newer than this envbuild with a message to upgrade it."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: expected a JSON manifest, found unreadable bytes "
                            f"({exc})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object, found {type(raw).__name__}")
    _check_schema(raw.get("schema"), where)
    issues = [f"{key}: expected {kind.__name__}, found "
              f"{'nothing' if key not in raw else type(raw[key]).__name__}"
              for key, kind in _TOP.items() if not isinstance(raw.get(key), kind)]
    issues += [f"{table}.{key}: expected a value, found none" for table, keys in _FIELDS.items()
               if isinstance(raw.get(table), dict) for key in keys if key not in raw[table]]
    dists: list[Any] = raw["distributions"] if isinstance(raw.get("distributions"), list) else []
    for i, dist in enumerate(dists):
        if not (isinstance(dist, dict) and all(isinstance(dist.get(k), str) for k in
                                               ("name", "version", "artifact", "sha256"))):
            issues.append(f"distributions[{i}]: expected name, version, artifact and sha256")
    if issues:
        raise ManifestError("\n".join(f"{where}: {issue}" for issue in issues))
    return Manifest(
        name=raw["name"], env_key=raw["env_key"], inputs=dict(raw["inputs"]),
        interpreter=InterpreterRecord(**{k: raw["interpreter"][k]
                                         for k in _FIELDS["interpreter"]}),
        distributions=tuple(Distribution(**{k: d[k] for k in ("name", "version", "artifact",
                                                                "sha256")}) for d in dists),
        environment=EnvContract(set=dict(raw["environment"]["set"]),
                                require=tuple(raw["environment"]["require"]),
                                unset=tuple(raw["environment"]["unset"])),
        launch=LaunchPolicy(hook=bool(raw["launch"]["hook"]), root=str(raw["launch"]["root"]),
                            record_environment=str(raw["launch"]["record_environment"])),
        tree_digest=raw["tree_digest"],
        host=HostNeeds(libraries={k: list(v) for k, v in raw["host"]["libraries"].items()},
                       glibc=raw["host"]["glibc"],
                       versions={s: {v: list(f) for v, f in vs.items()}
                                 for s, vs in raw["host"]["versions"].items()}),
        host_optional=tuple(raw["host"].get("optional", ())),
        sidecars=dict(raw["sidecars"]), schema=raw["schema"])


def _check_schema(schema: object, where: str) -> None:
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise ManifestError(f"{where}: expected schema {SCHEMA!r}, found {schema!r}: not an "
                            "envbuild manifest")
    version = schema[len(SCHEMA_PREFIX):]
    if version != str(SCHEMA_VERSION):
        newer = version.isdigit() and int(version) > SCHEMA_VERSION
        raise ManifestError(f"{where}: manifest schema {schema!r} is "
                            f"{'newer than' if newer else 'not'} {SCHEMA!r}, the one this "
                            f"envbuild reads{'; upgrade envbuild' if newer else ''}")


class TreeListing(NamedTuple):
    sidecar: bytes            # the `files` sidecar; its digest is the tree digest
    regular: list[str]        # relative paths of regular files, for the host scan


def list_tree(root: Path, forbidden: bytes, known: Known | None = None,
              skip: set[str] | frozenset[str] = frozenset()) -> TreeListing:
    """Hash every file; refuse a tree in which any file still holds `forbidden` (the build
    dir's absolute path): such an env would break when moved. A file in `known` (recorded
    when the store's tree it came from was installed, and checked against that record as
    it was put in place) is taken as recorded, not read again; one the walk meets must
    still have its recorded mode and size (else `RecordMismatch`). The dirs in `skip` hold
    nothing but such files (and dirs like them): they are not walked."""
    known = known or {}
    lines: dict[str, str] = {}
    regular: list[str] = []
    leaks: list[str] = []
    found = walk(str(root), skip=skip)
    if skip:
        for rel, rec in known.items():
            if rel.rpartition("/")[0] in skip:
                lines[rel] = files_line("f", rec[0], rec[1], rec[2], rel)
                regular.append(rel)
    for rel, st in found.items():
        if stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(root / rel))
            if forbidden in target:
                leaks.append(rel)
            lines[rel] = files_line("l", 0, len(target), hashlib.sha256(target).hexdigest(),
                                    rel)
        elif stat.S_ISREG(st.st_mode):
            record = known.get(rel)
            if record is not None:
                if record[:2] != (stat.S_IMODE(st.st_mode), st.st_size):
                    raise RecordMismatch(rel)
                lines[rel] = files_line("f", record[0], record[1], record[2], rel)
                regular.append(rel)
                continue
            data = (root / rel).read_bytes()
            if forbidden in data:
                leaks.append(rel)
            lines[rel] = files_line("f", stat.S_IMODE(st.st_mode), len(data),
                                    hashlib.sha256(data).hexdigest(), rel)
            regular.append(rel)
    if leaks:
        raise BuildError("the env is not relocatable: these files hold the build directory's "
                         "path: " + ", ".join(sorted(leaks)[:10]))
    bad = [rel for rel in lines if "\n" in rel or "\t" in rel]
    if bad:
        raise BuildError(f"{bad[0]!r}: file names with tabs or newlines are not supported")
    text = FILES_SCHEMA + "\n" + "".join(lines[rel] for rel in sorted(lines))
    return TreeListing(text.encode("utf-8"), sorted(regular))


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "l"
    return "d" if entry.is_dir() else ("f" if entry.is_file() else "o")


def startup_records(root: Path, site: str, startup: Startup | None) -> list[tuple[str, ...]]:
    """What the interpreter reads before a program's first line: site-packages' whole top
    level, bin/ (with link targets), and the startup's files (pyvenv.cfg, the .pth files,
    every module file its imports read, in the env or outside) and sys.path dirs."""
    records: list[tuple[str, ...]] = []
    with os.scandir(root / site) as it:
        top = sorted((e.name, _kind(e)) for e in it)
    records += [("entry", name, kind) for name, kind in top]
    with os.scandir(root / "bin") as it:
        records += [("bin", e.name, _kind(e), os.readlink(e.path) if e.is_symlink() else "")
                    for e in sorted(it, key=lambda e: e.name)]
    read = ["pyvenv.cfg"] + [f"{site}/{name}" for name, kind in top
                             if name.endswith(".pth") and kind == "f"]
    files = {rel: file_digest(str(root / rel)) for rel in read}
    if startup is not None:
        files.update(startup.files)
        records.append(("startnames", *startup.names))
        records += [("startdir", path, state, *entries)
                    for path, state, entries in startup.dirs]
    records += [("startfile", rel, digest) for rel, digest in sorted(files.items())]
    return records


def quick_records(site: str, root: Path, manifest: Manifest,
                  stdlib_landmark: str | None = None,
                  startup: Startup | None = None) -> list[tuple[str, ...]]:
    interp, host, contract = manifest.interpreter, manifest.host, manifest.environment
    records: list[tuple[str, ...]] = [
        ("python", "bin/python", interp.path, interp.sha256, interp.version),
        ("site", site),
    ]
    if interp.libpython:
        records.append(("pylib", interp.libpython["path"], interp.libpython["sha256"]))
    if stdlib_landmark:   # without its stdlib the interpreter cannot even start
        records.append(("pystdlib", stdlib_landmark))
    records += startup_records(root, site, startup)
    records += host_records(host, manifest.host_optional)
    records += [("set", k, v) for k, v in sorted(contract.set.items())]
    records += [("require", k) for k in sorted(contract.require)]
    records += [("unset", k) for k in sorted(contract.unset)]
    records += [("hook", "1" if manifest.launch.hook else "0"), ("root", manifest.launch.root),
                ("record", manifest.launch.record_environment)]
    return records


def seal(root: Path, draft: Manifest, site: str, forbidden: bytes,
         host_scan: Callable[[Path, list[str]], HostNeeds],
         stdlib_landmark: str | None = None, startup: Startup | None = None,
         fixed_time: str | None = None, recipe_path: Path | None = None,
         known: Known | None = None, skip: set[str] | frozenset[str] = frozenset()
         ) -> Manifest:
    """Write the sidecars and the manifest into `root`; return the manifest.

    `draft` holds everything but what is computed here: the tree digest, the host needs
    and the quick sidecar's digest. `recipe_path`, the recipe built from, goes in the
    provenance (not an image's, which names no path of the machine that built it).
    """
    (root / META).mkdir(exist_ok=True)
    listing = list_tree(root, forbidden, known, skip)
    manifest = draft._replace(tree_digest=sha256_bytes(listing.sidecar),
                       host=host_scan(root, listing.regular))
    quick = format_quick(quick_records(site, root, manifest, stdlib_landmark,
                                       startup)).encode("utf-8")
    manifest = manifest._replace(sidecars={"quick": sha256_bytes(quick)})
    atomic_write(root / FILES, listing.sidecar, mode=0o444)
    atomic_write(root / QUICK, quick, mode=0o444)
    import getpass  # here: only a build reads who

    # an image's env takes a fixed time and names nobody, so the image is the same anywhere
    provenance = {"built_utc": fixed_time, "envbuild_version": __version__} if fixed_time \
        else {"built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "host": os.uname().nodename,   # gethostname(2)'s, with no `socket` import
              "user": getpass.getuser(),
              "envbuild_version": __version__,
              "recipe": str(recipe_path.absolute()) if recipe_path else None}
    atomic_write(root / PROVENANCE, canonical(provenance), mode=0o444)
    atomic_write(root / MANIFEST, manifest.to_bytes(), mode=0o444)
    return manifest
