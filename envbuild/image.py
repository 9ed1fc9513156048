"""Container images from a lock: the env built inside the base image by the builder stage
(`Dockerfile.template`), then the final image written by envbuild itself (`imagelayers`)
and loaded into the engine, whose ID is checked against the one computed."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import imagecache
from .build import check_interpreter
from .errors import BuildError, InputError
from .fsutil import atomic_write, publish_dir, remove_tree
from .imagelayers import (
    BaseImage,
    ImageConfig,
    Layer,
    WrittenConfig,
    env_layers,
    iso,
    read_base,
    read_saved,
    write_config,
    write_loadable,
)
from .interpreter import PROBE_SCRIPT, Interpreter, image_interpreter
from .lock import read_lock
from .manifest import parse_manifest
from .proc import hermetic_env, pip_argv, run_tool
from .recipe import Recipe, load_recipe
from .store import Store
from .trust import find_trust
from .wheelcache import WheelCache

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
FIXED_EPOCH = 315532800          # 1980-01-01, the zip format's first day, as pip uses
DEFAULT_USER = "65532:65532"     # numeric and not root, whatever the base's passwd says
# envbuild's build-side dependencies, installed in the builder stage beside pip
_TOOLS = ("packaging", "pyelftools")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ImageResult:
    image_id: str
    tag: str
    manifest_digest: str
    env_dir: str
    layers: int
    pushed: str | None = None           # REPO@sha256:... with --push
    diff_ids: tuple[str, ...] = ()
    pushed_blobs: int | None = None      # blobs the registry did not have yet
    pushed_bytes: int | None = None

    @property
    def pushed_digest(self) -> str | None:
        return self.pushed.rpartition("@")[2] if self.pushed else None

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "tag": self.tag,
                "manifest_digest": self.manifest_digest, "env": self.env_dir,
                "layers": self.layers, "diff_ids": list(self.diff_ids), "pushed": self.pushed,
                "pushed_digest": self.pushed_digest, "pushed_blobs": self.pushed_blobs,
                "pushed_bytes": self.pushed_bytes}


def engine() -> Any:
    """A client of the engine at $DOCKER_HOST (or the default socket), answering."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        raise BuildError(f"docker engine: expected one answering at {where}, found: {exc}; "
                         "start dockerd or set DOCKER_HOST") from None
    driver = dict(tuple(p) for p in client.info().get("DriverStatus") or [])
    if "snapshotter" in driver.get("driver-type", ""):
        raise BuildError("docker engine: its containerd image store does not keep an image's "
                         "config bytes, so image IDs could not be checked; use an engine "
                         "with the classic image store")
    return client


def build_image(recipe_path: Path, tag: str, base: str | None = None,
                store_dir: Path | None = None, push: bool = False, ca: Path | None = None,
                progress: Progress = lambda _m: None, force: bool = False) -> ImageResult:
    """Build RECIPE's env into an image tagged `tag`, loaded into the engine; with `push`,
    also sent to the tag's registry. The env's layers of the same inputs built before are
    reused (`imagecache`) unless `force`."""
    recipe = load_recipe(recipe_path)
    lock = read_lock(recipe)
    base = base or recipe.image.get("base")
    if not base:
        raise InputError(f"{recipe.path}: expected a base image ([image] base or --base), "
                         "found none")
    client = engine()
    base_image = _base(client, base)
    store = Store.locate(store_dir)
    target = _probe_cached(client, base_image.id, store, progress, base)
    check_interpreter(recipe, lock, target, f"the base image {base}")
    entries = [e for e in lock.entries if e.applies(target.markers)]
    found = WheelCache(store, target, recipe, False, progress).fetch(entries)
    spec = ImageConfig(name=recipe.name, env_dir=f"/opt/envbuild/{recipe.name}",
                       epoch=int(os.environ.get("SOURCE_DATE_EPOCH") or FIXED_EPOCH),
                       manifest_digest="", user=recipe.image.get("user") or DEFAULT_USER,
                       cmd=list(recipe.image.get("entrypoint") or ["python"]))
    work = Path(tempfile.mkdtemp(prefix="image-", dir=store.tmp))
    try:
        tools = _tool_wheels(store, target, progress)
        cache_key = imagecache.key(lock.text, recipe.digest, base_image.id, tools.name,
                                   spec.epoch, spec.env_dir)
        kept = None if force else imagecache.load(store.layout, cache_key)
        if kept is None:
            context = work / "context"
            _context(context, recipe, [found[e.name] for e in entries], tools, {
                "PYTHON": target.executable, "RECIPE": recipe.path.name,
                "ENV_DIR": spec.env_dir, "BUILT_UTC": iso(spec.epoch)})
            builder = _run_builder(client, context, base_image.id, progress)
            kept = _env_from(client, builder, work, spec, progress)
            _remove_builder(client, builder)
            imagecache.keep(store.layout, cache_key, *kept)
        else:
            progress("reusing the env's layers built before from the same inputs "
                     "(--force builds them again)")
        result, config = _write_image(client, work, _base_parts(
            client, base_image, store, progress), *kept, spec, tag, progress)
        if push:
            result = _push(result, config, store, ca, progress)
    finally:
        remove_tree(work)
    return result


def _env_from(client: Any, builder: str, work: Path, spec: ImageConfig, progress: Progress
              ) -> tuple[list[Layer], bytes]:
    """The env taken from the builder's image into deterministic layers; its manifest."""
    progress("writing the image's layers")
    env_tar = work / "env.tar"
    _export(client, builder, spec.env_dir, env_tar)
    parts = work / "layers"
    parts.mkdir()
    layers, manifest_bytes = env_layers(env_tar, spec.env_dir, parts, spec.epoch)
    env_tar.unlink()
    return layers, manifest_bytes


def _write_image(client: Any, work: Path, base: BaseImage, layers: list[Layer],
                 manifest_bytes: bytes, spec: ImageConfig, tag: str, progress: Progress
                 ) -> tuple[ImageResult, WrittenConfig]:
    """The config, the image loaded and its ID checked against the config's digest."""
    from dataclasses import replace

    parts = work / "parts"
    parts.mkdir()
    manifest = parse_manifest(manifest_bytes, f"{spec.env_dir}/envbuild-manifest.json")
    config = write_config(parts, base, layers, replace(spec, manifest_digest=manifest.digest))
    progress(f"loading {tag} into the engine")
    image_id = _load(client, write_loadable(parts, config, work / "image.tar", tag,
                                            tuple(layer.diff_id for layer in base.layers)))
    if image_id != config.image_id:
        raise BuildError(f"docker engine: expected image ID {config.image_id} (the "
                         f"config's digest), found {image_id}")
    return ImageResult(image_id, tag, manifest.digest, spec.env_dir, len(config.diff_ids),
                       diff_ids=config.diff_ids), config


def _push(result: ImageResult, config: WrittenConfig, store: Store, ca: Path | None,
          progress: Progress) -> ImageResult:
    from dataclasses import replace

    from .registry import ImageParts, push

    parts = ImageParts(config=config.path.read_bytes(), layers=config.layers,
                       diff_ids=config.diff_ids)
    sent = push(parts, result.tag, Path(store.layout.blobs()), ca=ca, progress=progress)
    return replace(result, pushed=sent.reference, pushed_blobs=sent.blobs_sent,
                   pushed_bytes=sent.bytes_sent)


def _base(client: Any, base: str) -> Any:
    import docker

    try:
        return client.images.get(base)
    except docker.errors.ImageNotFound:
        raise InputError(f"--base: expected an image in the engine, found no {base!r}; "
                         "pull, import or build it first (envbuild never pulls)") from None


def _probe_cached(client: Any, image_id: str, store: Store, progress: Progress,
                  name: str) -> Interpreter:
    """The base's interpreter, probed once per base image ID (an image never changes)."""
    path = Path(store.layout.base_image(image_id) + ".probe.json")
    try:
        return image_interpreter(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        pass
    progress("probing the base image's interpreter")
    info = probe_info(client, image_id, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(info, sort_keys=True))
    return image_interpreter(info)


def _base_parts(client: Any, image: Any, store: Store, progress: Progress) -> BaseImage:
    """The base's config and layers as `docker save` gives them, kept once per base image
    ID in the store (for the config's history and for pushes)."""
    folder = Path(store.layout.base_image(image.id))
    if (folder / "config.json").is_file():
        return read_base(folder)
    progress("saving the base image's layers")
    staging = Path(tempfile.mkdtemp(prefix="base-", dir=store.tmp))
    try:
        saved = staging / "saved.tar"
        with open(saved, "wb") as fh:
            for chunk in image.save(named=False):
                fh.write(chunk)
        read_saved(saved, staging)
        saved.unlink()
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not publish_dir(staging, folder):
            remove_tree(staging)
    except BaseException:
        remove_tree(staging)
        raise
    return read_base(folder)


def probe_info(client: Any, image: str, name: str | None = None) -> dict[str, Any]:
    """The probe's answer from the base image's own `python3`, run in it (no network);
    `name`: the base as the user named it, for the error."""
    import docker

    from .containerio import run_output

    found = "nothing"
    try:
        status, out, err = run_output(client, image, ["-I", "-S", "-c", PROBE_SCRIPT],
                                      entrypoint="python3", user="0")
        found = f"exit {status}: {err.decode(errors='replace').strip()[-400:]}"
        if status == 0:
            info: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
            return info
    except docker.errors.APIError as exc:
        found = str(exc)
    except (ValueError, IndexError) as exc:
        found = f"unreadable output ({exc})"
    raise InputError(f"base image {name or image}: expected python3 (3.9 or newer) on its PATH, "
                     f"found {found}")


def _tool_wheels(store: Store, target: Interpreter, progress: Progress) -> Path:
    """pip and envbuild's build-side dependencies as wheels for the target's Python, at
    the versions this envbuild runs with; fetched once per store and ABI."""
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in ("pip", *_TOOLS)]
    if tuple(int(x) for x in target.version.split(".")[:2]) < (3, 11):
        pins.append("tomli>=2")
    folder = Path(store.layout.image_tools(target.abi)) / "-".join(sorted(pins))
    if folder.is_dir():
        return folder
    progress(f"fetching envbuild's build tools for Python {target.version}")
    staging = Path(tempfile.mkdtemp(prefix="tools-", dir=store.tmp))
    try:
        index = os.environ.get("ENVBUILD_TOOLS_INDEX_URL") or "https://pypi.org/simple"
        run_tool(pip_argv("download", "--no-deps", "--only-binary=:all:", "--progress-bar",
                          "off", "--python-version", ".".join(target.version.split(".")[:2]),
                          "--index-url", index, *find_trust("download").pip_args(),
                          "--dest", str(staging), *pins),
                 env=hermetic_env())
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, folder)
    except OSError:
        remove_tree(staging)   # another build published the same pins meanwhile
    except BaseException:
        remove_tree(staging)
        raise
    return folder


def _context(context: Path, recipe: Recipe, artifacts: list[tuple[Path, str]],
             tools: Path, values: dict[str, str]) -> None:
    """The builder stage's build context (see Dockerfile.template)."""
    here = Path(__file__).parent
    context.mkdir()
    (context / "build.env").write_text("".join(f"{k}={shlex.quote(v)}\n"
                                               for k, v in sorted(values.items())))
    shutil.copyfile(here / "Dockerfile.template", context / "Dockerfile")
    shutil.copytree(tools, context / "wheels")
    shutil.copytree(here, context / "src" / "envbuild",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (context / "recipe").mkdir()
    shutil.copyfile(recipe.path, context / "recipe" / recipe.path.name)
    shutil.copyfile(recipe.lock_path, context / "recipe" / recipe.lock_path.name)
    layout = Store(context / "store").layout
    for path, digest in artifacts:
        folder = Path(layout.wheel_dir(digest))
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copyfile(path, folder / path.name)


def _run_builder(client: Any, context: Path, base: str, progress: Progress) -> str:
    """Run the builder stage; its image ID. Its log is shown as progress, and its last
    lines name the failure if it fails."""
    tail: list[str] = []
    image_id = None
    stream = client.api.build(path=str(context), dockerfile="Dockerfile", buildargs={"BASE": base},
                              network_mode="none", pull=False, rm=True, forcerm=True,
                              decode=True, labels={"io.envbuild.builder": "1"})
    for chunk in stream:
        text = _ANSI.sub("", chunk.get("stream", ""))
        for line in text.splitlines():
            if line.strip() and not line.startswith(("Removing intermediate", " ---> ")):
                tail = [*tail[-19:], line]
                if line.startswith("envbuild: "):
                    progress(line[len("envbuild: "):])
        if "error" in chunk:
            raise BuildError("the builder stage failed (its last lines follow):\n" +
                             "\n".join([*tail[-16:], _ANSI.sub("", chunk["error"]).strip()]))
        image_id = (chunk.get("aux") or {}).get("ID", image_id)
    if not image_id:
        raise BuildError("the builder stage gave no image:\n" + "\n".join(tail))
    return str(image_id)


def _export(client: Any, image: str, env_dir: str, out: Path) -> None:
    container = client.containers.create(image, command=["true"], network_disabled=True)
    try:
        stream, _ = container.get_archive(env_dir)
        with open(out, "wb") as fh:
            for chunk in stream:
                fh.write(chunk)
    finally:
        container.remove(force=True)


def _load(client: Any, tarball: Path) -> str:
    with open(tarball, "rb") as fh:
        loaded = client.images.load(fh)
    if not loaded:
        raise BuildError(f"docker engine: loading {tarball} gave no image")
    return str(loaded[-1].id)


def _remove_builder(client: Any, builder: str) -> None:
    import docker

    try:
        client.images.remove(builder, noprune=False)
    except docker.errors.APIError as exc:
        log.warning("could not remove the builder image %s: %s", builder, exc)
