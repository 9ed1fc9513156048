"""An image's env layers kept in the store, by a digest of everything that decides their
bytes: the lock, the recipe, the base image's ID, envbuild's own code (it runs in the
builder and writes the layers), the builder's tools, the fixed time and the env's path.
The same inputs again reuse them, checked against their digests, as `envbuild build`
reuses an env: the builder stage does not run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from . import BUILD_FORMAT
from .fsutil import publish_dir, remove_tree
from .hashing import file_digest
from .imagelayers import Layer
from .layout import StoreLayout

log = logging.getLogger(__name__)
_INDEX = "layers.json"
_MANIFEST = "envbuild-manifest.json"


def key(lock_text: str, recipe_digest: str, base_id: str, tools: str, epoch: int,
        env_dir: str) -> str:
    here = Path(__file__).parent
    code = hashlib.sha256()
    for path in sorted(here.glob("*.py")) + [here / "Dockerfile.template"]:
        code.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    material = json.dumps({"lock": hashlib.sha256(lock_text.encode()).hexdigest(),
                           "recipe": recipe_digest, "base": base_id, "tools": tools,
                           "epoch": epoch, "env_dir": env_dir, "format": BUILD_FORMAT,
                           "envbuild": code.hexdigest()}, sort_keys=True)
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


def folder(layout: StoreLayout, cache_key: str) -> Path:
    return Path(layout.root, "images", cache_key[7:])


def load(layout: StoreLayout, cache_key: str) -> tuple[list[Layer], bytes] | None:
    """The kept layers and the env's manifest, each layer checked against its digest; None
    if there are none, or they are damaged (then removed, to be built again)."""
    where = folder(layout, cache_key)
    try:
        index = json.loads((where / _INDEX).read_text())
        manifest = (where / _MANIFEST).read_bytes()
    except (OSError, ValueError):
        return None
    layers = [Layer(item["diff_id"], where / f"{item['diff_id'][7:]}.tar",
                    item["created_by"]) for item in index]
    for layer in layers:
        if not layer.path.is_file() or file_digest(str(layer.path)) != layer.diff_id:
            log.warning("%s: a kept layer no longer matches its digest; building again",
                        where)
            remove_tree(where)
            return None
    return layers, manifest


def keep(layout: StoreLayout, cache_key: str, layers: list[Layer], manifest: bytes) -> None:
    """Keep the layers (hard links where the file system allows) for the next build."""
    where = folder(layout, cache_key)
    if where.is_dir():
        return
    where.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="image-", dir=layout.tmp))
    try:
        for layer in layers:
            target = staging / layer.path.name
            try:
                os.link(layer.path, target)
            except OSError:
                target.write_bytes(layer.path.read_bytes())
        (staging / _MANIFEST).write_bytes(manifest)
        (staging / _INDEX).write_text(json.dumps(
            [{"diff_id": layer.diff_id, "created_by": layer.created_by} for layer in layers]))
        if not publish_dir(staging, where):
            remove_tree(staging)
    except BaseException:
        remove_tree(staging)
        raise
