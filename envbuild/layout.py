"""Where things live: inside an env, in a store, in a staging root, in the per-user caches.

The one module that knows these paths. Stdlib only and light to import (no pathlib, which
pulls in `re`): the launch path finds run-record files and staging roots through it.
"""

from __future__ import annotations

import os
import sys

# ---- inside an env -----------------------------------------------------------------------

MANIFEST = "envbuild-manifest.json"
META = ".envbuild"                          # sidecars, outside the tree digest
QUICK = META + "/quick"
FILES = META + "/files"
PROVENANCE = META + "/provenance.json"
LAUNCH_DIR = "lib/envbuild-launch"          # the guard's sys.path entry
LAUNCH_PKG = LAUNCH_DIR + "/envbuild"
GUARD = "bin/envbuild-guard"

# ---- the per-user cache ------------------------------------------------------------------


def user_cache_root() -> str:
    """`platformdirs.user_cache_dir("envbuild")`, computed without importing it on Linux
    (a test holds the two equal); platformdirs itself elsewhere, where it is installed."""
    if not sys.platform.startswith("linux"):
        try:
            import platformdirs

            return str(platformdirs.user_cache_dir("envbuild"))
        except ImportError:
            pass
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "envbuild")


def host_cache_dir() -> str:
    """The per-host answers a launch keeps (interpreter hashes, library checks): per user,
    per host, since a home directory is often shared by every node."""
    key = (os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"))
    if _host_cache[0] != key:   # asked several times per launch
        _host_cache[:] = [key, os.path.join(user_cache_root(), "hosts", os.uname().nodename)]
    return str(_host_cache[1])


_host_cache: list[object] = [None, ""]


def download_cache_root() -> str:
    """The per-user download cache every store of the user fills from: $ENVBUILD_CACHE if
    set and non-empty, else `<user cache root>/downloads`. Absolute, `~` expanded; nothing
    is created."""
    chosen = os.environ.get("ENVBUILD_CACHE", "")
    if not chosen:
        chosen = os.path.join(user_cache_root(), "downloads")
    return os.path.abspath(os.path.expanduser(chosen))


class DownloadLayout:
    """The paths of the download cache: `sha256/<hex>/FILE` (and its `.origin.json`), as a
    store's `wheels/<hex>/`, and `tmp/` for downloads in progress (on the same file system,
    so they are renamed into place). Nothing here touches the disk."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.artifacts = os.path.join(root, "sha256")
        self.tmp = os.path.join(root, "tmp")

    def artifact_dir(self, sha256: str) -> str:
        return os.path.join(self.artifacts, digest_hex(sha256))


# ---- a store -----------------------------------------------------------------------------


def store_root(explicit: str | os.PathLike[str] | None = None) -> str:
    """Where the store is: `explicit` (--store), else $ENVBUILD_STORE, else the per-user
    cache dir. Absolute, `~` expanded; nothing is created."""
    chosen = os.fspath(explicit) if explicit is not None else ""
    if not chosen:
        chosen = os.environ.get("ENVBUILD_STORE", "") or user_cache_root()
    return os.path.abspath(os.path.expanduser(chosen))


USED = "used"   # a store's marks of use: `used/<name>-<key>`, its mtime the last use


def short_key(env_key: str) -> str:
    """The first 16 hex digits of an env key: the part in an env's directory name."""
    return env_key[7:23] if env_key.startswith("sha256:") else env_key[:16]


class StoreLayout:
    """The paths of one store. Nothing here touches the disk."""

    SUBDIRS = ("wheels", "built", "pycs", "envs", "locks", "runs", "tmp", USED)

    def __init__(self, root: str) -> None:
        self.root = root
        (self.wheels, self.built, self.pycs, self.envs, self.locks, self.runs, self.tmp,
         self.used) = (os.path.join(root, sub) for sub in self.SUBDIRS)
        self.tools = os.path.join(root, "tools")     # made when a tool venv is first built
        self.uv_cache = os.path.join(root, "uv-cache")    # `lock --resolver uv`'s, made by uv
        self.trees = os.path.join(root, "trees")     # made when a wheel is first installed
        self.venvs = os.path.join(root, "venvs")     # made when an interpreter first builds

    def wheel_dir(self, sha256: str) -> str:
        """Every artifact under its own hash: `wheels/<hex>/FILE`."""
        return os.path.join(self.wheels, digest_hex(sha256))

    def built_dir(self, sdist_sha256: str, abi: str, platform: str) -> str:
        """The wheel built from an sdist, once per interpreter ABI and platform."""
        return os.path.join(self.built, f"{digest_hex(sdist_sha256)}-{abi}-{platform}")

    def pyc_dir(self, wheel_sha256: str, abi: str, version: str) -> str:
        """One wheel's compiled pycs, for the next build that installs it."""
        return os.path.join(self.pycs, f"{digest_hex(wheel_sha256)}-{abi}-{version}")

    def venv_dir(self, key: str) -> str:
        """An empty venv, relocated, that builds copy instead of running `python -m venv`:
        one per interpreter and prompt (`key` hashes both)."""
        return os.path.join(self.venvs, key)

    def tree_dir(self, wheel_sha256: str, abi: str, version: str, style: str) -> str:
        """One wheel installed (pycs compiled) for one interpreter, with console scripts of
        one style (`pipscripts`), which envs link from."""
        return os.path.join(self.trees, f"{digest_hex(wheel_sha256)}-{abi}-{version}-{style}")

    def env_dir(self, name: str, env_key: str) -> str:
        return os.path.join(self.envs, f"{name}-{short_key(env_key)}")

    def tmp_env_prefix(self, name: str, env_key: str) -> str:
        """The name prefix of a build in progress, in `envs/` (renamed into place when done)."""
        return f".tmp-{name}-{short_key(env_key)}-"

    def aside_dir(self, why: str, name: str, env_key: str, utc: str) -> str:
        """Where an env found damaged (`why` "damaged") or being rebuilt ("replaced") is
        moved by a build, or one being removed ("removed") by gc:
        `envs/.<why>-<name>-<key>-<utc>/`."""
        return os.path.join(self.envs, f".{why}-{name}-{short_key(env_key)}-{utc}")

    def used_mark(self, dir_name: str) -> str:
        """The mark of use of `envs/<dir_name>` (see `usage_mark`)."""
        return os.path.join(self.used, dir_name)

    def build_lock(self, name: str, env_key: str) -> str:
        return os.path.join(self.locks, f"{name}-{short_key(env_key)}.lock")

    def image_tools(self, abi: str) -> str:
        """envbuild's build-side wheels for an image's interpreter (its builder stage)."""
        return os.path.join(self.tools, f"image-{abi}")

    def base_image(self, image_id: str) -> str:
        """A base image's config and layers as `docker save` gave them, kept by its ID."""
        return os.path.join(self.root, "bases", digest_hex(image_id))

    def blobs(self) -> str:
        """Compressed image layers, by their uncompressed digest, so a push is the same."""
        return os.path.join(self.root, "blobs")

    def tool_dir(self, name: str) -> str:
        """A tool venv, built once and reused (pip-tools for a target interpreter):
        `tools/<name>`, built in `tools/.tmp-<name>-*` and renamed into place."""
        return os.path.join(self.tools, name)

    def tool_lock(self, name: str) -> str:
        return os.path.join(self.locks, f"tool-{name}.lock")

    def runlog(self, host: str) -> str:
        """One run-record file per host: appends are not atomic across NFS clients."""
        return os.path.join(self.runs, host + ".jsonl")


def store_of_env(env: str) -> str | None:
    """The store an env was built in, recognized by its layout (`X/envs/<env>` with
    `X/wheels` and `X/locks` beside it: `envs/` and `runs/` alone are a common project
    layout), or None."""
    envs = os.path.dirname(os.path.abspath(env))
    root = os.path.dirname(envs)
    if os.path.basename(envs) != "envs":
        return None
    if os.path.isdir(os.path.join(root, "wheels")) and os.path.isdir(os.path.join(root, "locks")):
        return root
    return None


def usage_mark(env: str) -> str | None:
    """The mark of use of the env at `<store>/envs/<name>-<key>`: `<store>/used/<name>-<key>`,
    whose mtime is the env's last build, reuse or launch. It lives in the store's writable
    part, beside the env (which may be read-only to whoever launches it). None for a path
    outside a store's `envs/`, judged by its name alone (no syscall)."""
    envs, base = os.path.split(env.rstrip("/"))
    if os.path.basename(envs) != "envs" or not base or base.startswith("."):
        return None
    return os.path.join(os.path.dirname(envs), USED, base)


def mark_used(env: str) -> None:
    """Leave the mark of a use: one `utime` of the env's usage mark (made here on the first
    use after a build that did not make it). Never fails: a read-only store, or another
    user's, keeps its old mark and the launch goes on."""
    mark = usage_mark(env)
    if mark is None:
        return
    try:
        os.utime(mark)
    except FileNotFoundError:
        try:
            os.close(os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
        except OSError:
            pass
    except OSError:
        pass


def runlog_path(env: str | None = None) -> str:
    """$ENVBUILD_RUNLOG; else `runs/<host>.jsonl` in $ENVBUILD_STORE, or in the store `env`
    was built in if this user can write its `runs/`, or in the per-user store."""
    explicit = os.environ.get("ENVBUILD_RUNLOG")
    if explicit:
        return explicit
    store = os.environ.get("ENVBUILD_STORE")
    host = os.uname().nodename
    if not store and env:
        own = store_of_env(env)
        # this user can append there: the dir, and the host's file if another made it 0600
        if own is not None and os.access(os.path.join(own, "runs"), os.W_OK):
            mine = StoreLayout(own).runlog(host)
            if not os.path.exists(mine) or os.access(mine, os.W_OK):
                store = own
    return StoreLayout(store_root(store or None)).runlog(host)


# ---- a staging root ----------------------------------------------------------------------

VERSIONS = ".envs"


class StagingLayout:
    """The paths of one shared-disk staging root: each version read-only under `.envs/`,
    its archive beside it, a pointer per name, leases that runs leave for gc."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.versions = os.path.join(root, VERSIONS)
        self.leases = os.path.join(root, ".leases")
        self.history = os.path.join(root, ".history")
        self.locks = os.path.join(root, ".locks")
        self.trash = os.path.join(root, ".trash")
        self.tmp = os.path.join(root, ".tmp")

    def version_dir(self, name: str, env_key: str) -> str:
        return os.path.join(self.versions, f"{name}-{short_key(env_key)}")

    def archive(self, name: str, env_key: str) -> str:
        return self.version_dir(name, env_key) + ".tar"

    def pointer(self, name: str) -> str:
        """The relative symlink people and scripts use: `ROOT/<name>`."""
        return os.path.join(self.root, name)

    def current(self, name: str) -> str:
        """The small file a launch opens fresh to find the current version (a symlink's
        target may be cached by a network file system's client)."""
        return os.path.join(self.history, name + ".current")

    def history_file(self, name: str) -> str:
        return os.path.join(self.history, name + ".json")

    def lease(self, version: str, host: str) -> str:
        return os.path.join(self.leases, version, host)


def resolve_pointer(env: str) -> tuple[str, str | None]:
    """`ROOT/NAME` of a staging root: (the current version's dir, ROOT), read from the small
    file `ROOT/.history/NAME.current`, opened fresh at each launch (a network file system's
    client may serve a symlink's target from its cache). Anything else: (env, None)."""
    path = os.path.abspath(env)
    root, name = os.path.split(path)
    try:
        with open(os.path.join(root, ".history", name + ".current")) as fh:
            version = fh.read().strip()
    except OSError:
        return path, None
    if not version or "/" in version:
        return path, None
    return os.path.join(root, VERSIONS, version), root


def staging_root_of(env: str) -> str | None:
    """The staging root a published version lives in (`ROOT/.envs/<name>-<key>`), or None."""
    versions = os.path.dirname(os.path.abspath(env))
    if os.path.basename(versions) != VERSIONS:
        return None
    return os.path.dirname(versions)


def digest_hex(digest: str) -> str:
    """The hex of a "sha256:<hex>" digest: how the store's dirs are named."""
    return digest[7:] if digest.startswith("sha256:") else digest
