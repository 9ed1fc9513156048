"""What `envbuild diff` compares: each input (an env, a staged pointer, a manifest file, a
run record `FILE:LINE`, a `verify --json` report, `docker://IMAGE`) read into one `Side`.

A side holds what its input says: a manifest (when known), the manifest's digest, what a
verification on its machine found (a report, a run record), the environment a run had,
and for an env on this machine its directory (for `--files`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError, ManifestError, NotAnEnvError
from .hashing import sha256_bytes
from .layout import FILES, MANIFEST, resolve_pointer
from .manifest import SCHEMA_PREFIX, Manifest, parse_manifest
from .verify import Difference

DOCKER = "docker://"


@dataclass
class Side:
    label: str
    digest: str | None = None
    manifest: Manifest | None = None
    observed: list[Difference] | None = None   # a verification's differences on its machine
    environment: dict[str, str] | None = None  # a run's environment (after the contract)
    env_dir: str | None = None                 # an env on this machine
    image: str | None = None                   # an image in the engine
    files: dict[str, tuple[str, int, int, str]] | None = field(default=None, repr=False)


def load_side(spec: str) -> Side:
    """The side `spec` names; InputError (exit 2) saying what it expected, if none."""
    if spec.startswith(DOCKER):
        return _image_side(spec[len(DOCKER):])
    if os.path.isdir(spec):
        env = resolve_pointer(spec)[0]
        data = _read(os.path.join(env, MANIFEST), f"{spec}: not an envbuild env: expected "
                     f"{MANIFEST} in it, found none")
        return Side(spec, sha256_bytes(data), parse_manifest(data, os.path.join(env, MANIFEST)),
                    env_dir=env)
    path, sep, line = spec.rpartition(":")
    if sep and line.isdigit() and os.path.isfile(path):
        return _record_side(spec, path, int(line))
    if os.path.isfile(spec):
        return _file_side(spec)
    raise InputError(f"{spec}: expected an env dir, a staged pointer, a manifest file, a run "
                     "record FILE:LINE, a `verify --json` report or docker://IMAGE, found "
                     f"{'nothing there' if not os.path.lexists(spec) else 'none of those'}")


def _read(path: str, missing: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise NotAnEnvError(missing) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it: {exc.strerror}") from None


def _file_side(path: str) -> Side:
    """A manifest file, or a `verify --json` report."""
    data = _read(path, f"{path}: no such file")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raw = None
    if (isinstance(raw, dict) and "schema" in raw) or os.path.basename(path) == MANIFEST:
        return Side(path, sha256_bytes(data), parse_manifest(data, path))
    if isinstance(raw, dict) and {"level", "manifest_digest", "differences"} <= raw.keys():
        side = Side(path, str(raw["manifest_digest"] or "") or None,
                    observed=_differences(raw["differences"], path))
        _attach(side, raw.get("env"))
        return side
    if data.lstrip()[:1] == b"{" and b"\n{" in data:
        raise InputError(f"{path}: a file of run records: name one line of it, {path}:LINE")
    raise ManifestError(f"{path}: expected an envbuild manifest ({SCHEMA_PREFIX}1) or a "
                        f"`verify --json` report, found {_what(raw)}")


def _what(raw: object) -> str:
    if raw is None:
        return "no JSON (unreadable or garbled)"
    if isinstance(raw, dict):
        return "a JSON object with keys " + ", ".join(sorted(raw)[:8])
    return f"JSON {type(raw).__name__}"


def _record_side(spec: str, path: str, number: int) -> Side:
    """Line `number` (from 1) of a run-record file."""
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    if not 1 <= number <= len(lines) or not lines[number - 1].strip():
        raise InputError(f"{spec}: expected a run record on line {number}, found "
                         f"{'no such line' if number > len(lines) or number < 1 else 'none'} "
                         f"({path} has {len([x for x in lines if x.strip()])} records)")
    try:
        raw = json.loads(lines[number - 1])
    except ValueError as exc:
        raise InputError(f"{spec}: expected a JSON run record, found garbled JSON "
                         f"({exc})") from None
    if not isinstance(raw, dict) or "manifest_digest" not in raw or "verify" not in raw:
        raise InputError(f"{spec}: expected a run record (manifest_digest, verify, "
                         f"environment), found {_what(raw)}")
    verify = raw["verify"] if isinstance(raw["verify"], dict) else {}
    env = raw.get("environment")
    side = Side(spec, raw["manifest_digest"] or None,
                observed=_differences(verify.get("differences", []), spec),
                environment={str(k): str(v) for k, v in env.items()}
                if isinstance(env, dict) else None)
    _attach(side, raw.get("env"))
    return side


def _attach(side: Side, env: object) -> None:
    """The manifest of the env a record or report names, if it is still there and is the
    very one it names (same digest): then the diff can say what was different."""
    if not isinstance(env, str) or not side.digest:
        return
    try:
        with open(os.path.join(env, MANIFEST), "rb") as fh:
            data = fh.read()
    except OSError:
        return
    if sha256_bytes(data) == side.digest:
        side.manifest = parse_manifest(data, os.path.join(env, MANIFEST))


def _differences(items: object, where: str) -> list[Difference]:
    if not isinstance(items, list) or not all(
            isinstance(d, dict) and {"kind", "subject", "expected", "found"} <= d.keys()
            for d in items):
        raise InputError(f"{where}: expected differences as a list of {{kind, subject, "
                         "expected, found}}, found something else")
    return [Difference(d["kind"], d["subject"], d["expected"], d["found"]) for d in items]


# ---- docker://IMAGE: the manifest read from inside the image ---------------------------


def _image_side(image: str) -> Side:
    data = image_file(image, MANIFEST)
    env = _image_env(image)
    return Side(DOCKER + image, sha256_bytes(data),
                parse_manifest(data, f"{DOCKER}{image}:{env}/{MANIFEST}"), image=image)


def _image_env(image: str) -> str:
    import docker

    from .image import engine

    if not image:
        raise InputError("docker://: expected an image name after it, found nothing")
    try:
        found: Any = engine().images.get(image)
    except docker.errors.ImageNotFound:
        raise NotAnEnvError(f"{DOCKER}{image}: expected an image in the engine, found none "
                            "(envbuild never pulls)") from None
    env = ((found.attrs.get("Config") or {}).get("Labels") or {}).get("io.envbuild.env")
    if not env:
        raise NotAnEnvError(f"{DOCKER}{image}: expected an envbuild image (label "
                            "io.envbuild.env), found an image without it")
    return str(env)


def image_file(image: str, rel: str) -> bytes:
    """A file of the image's env, read from a container that is created and never run."""
    from .containerio import read_file
    from .image import engine

    return read_file(engine(), image, f"{_image_env(image)}/{rel}")


def image_files_sidecar(image: str) -> bytes:
    return image_file(image, FILES)
