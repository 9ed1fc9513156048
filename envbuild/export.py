"""`envbuild export ENV --format pylock|cyclonedx|requirements`: the env's distributions in
the formats other tools read.

- pylock: PEP 751 `pylock.toml`: every distribution with the artifact it was installed from
  (file name, URL, sha256; the URL the wheel cache recorded when it downloaded it, else the
  cached file's path), and the target interpreter as an `environments` marker.
- cyclonedx: a CycloneDX 1.6 JSON SBOM through cyclonedx-python-lib (`envbuild[sbom]`).
- requirements: `NAME==VERSION --hash=sha256:...`, for `pip install --require-hashes -r`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .diffinputs import Side, load_side
from .errors import InputError
from .fsutil import atomic_write
from .layout import StoreLayout, store_of_env, store_root
from .manifest import Distribution, Manifest
from .wheelcache import artifact_origin

FORMATS = ("pylock", "cyclonedx", "requirements")

__all__ = ["FORMATS", "export", "render"]


def export(env: str, fmt: str, output: Path | None = None) -> str:
    """The document of format `fmt` for the env `env` names (an env, a staged pointer, or
    docker://IMAGE); written atomically to `output` if given. Returns the text."""
    if fmt not in FORMATS:
        raise InputError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    side = load_side(env)
    if side.env_dir is None and side.image is None:
        raise InputError(f"{env}: expected an env, a staged pointer or docker://IMAGE, found "
                         "a file (export describes an env)")
    text = render(side, fmt)
    if output is not None:
        atomic_write(output, text)
    return text


def render(side: Side, fmt: str) -> str:
    manifest = side.manifest
    assert manifest is not None and side.digest is not None
    if fmt == "requirements":
        return requirements(manifest, side.digest)
    if fmt == "cyclonedx":
        from .sbom import cyclonedx

        return cyclonedx(manifest, side.digest)
    return pylock(manifest, _store(side))


def requirements(manifest: Manifest, digest: str) -> str:
    lines = [f"# {manifest.name} ({digest}), Python {manifest.interpreter.version}: "
             f"envbuild export --format requirements\n"]
    lines += [f"{d.name}=={d.version} --hash={d.sha256}\n"
              for d in sorted(manifest.distributions, key=lambda d: d.name)]
    return "".join(lines)


# ---- PEP 751 ---------------------------------------------------------------------------


def marker(manifest: Manifest) -> str:
    """The environment the env was built for, as a PEP 508 marker."""
    interp = manifest.interpreter
    machine = interp.platform.split("_", 1)[1] if "_" in interp.platform else interp.platform
    system = "linux" if "linux" in interp.platform else interp.platform.split("_", 1)[0]
    return (f'implementation_name == "{interp.implementation}" and python_full_version == '
            f'"{interp.version}" and sys_platform == "{system}" and platform_machine == '
            f'"{machine}"')


def pylock(manifest: Manifest, store: str | None) -> str:
    """`pylock.toml` (lock-version 1.0) of exactly the env's distributions."""
    out = [f"lock-version = {_q('1.0')}\n",
           f"environments = [{_q(marker(manifest))}]\n",
           f"requires-python = {_q('==' + manifest.interpreter.version)}\n",
           f"created-by = {_q('envbuild')}\n"]
    for dist in sorted(manifest.distributions, key=lambda d: d.name):
        out.append(f"\n[[packages]]\nname = {_q(dist.name)}\nversion = {_q(dist.version)}\n")
        table = "[[packages.wheels]]" if dist.artifact.endswith(".whl") else "[packages.sdist]"
        out.append(f"\n{table}\nname = {_q(dist.artifact)}\n{_where(dist, store)}"
                   f"hashes = {{sha256 = {_q(dist.sha256.removeprefix('sha256:'))}}}\n")
    return "".join(out)


def _where(dist: Distribution, store: str | None) -> str:
    """`url = ...` where the artifact came from; a local file as `path`."""
    folder = StoreLayout(store).wheel_dir(dist.sha256) if store else None
    url = artifact_origin(folder) if folder else None
    if url and urlsplit(url).scheme in ("http", "https"):
        return f"url = {_q(url)}\n"
    if url and urlsplit(url).scheme == "file":
        return f"path = {_q(unquote(urlsplit(url).path))}\n"
    if folder and os.path.isfile(os.path.join(folder, dist.artifact)):
        return f"path = {_q(os.path.join(folder, dist.artifact))}\n"
    raise InputError(f"{dist.artifact}: expected its origin URL in the wheel cache "
                     f"({store or 'no store found'}), found none; build the env from a store "
                     "that downloaded it (set --store or $ENVBUILD_STORE)")


def _q(value: str) -> str:
    """A TOML basic string: JSON's escapes, all ASCII, are TOML's."""
    return json.dumps(value, ensure_ascii=True)


def _store(side: Side) -> str | None:
    store = store_of_env(side.env_dir) if side.env_dir else None
    if store is None:
        default = store_root(None)
        store = default if os.path.isdir(os.path.join(default, "wheels")) else None
    return store
