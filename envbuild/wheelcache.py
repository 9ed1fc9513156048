"""The hash-checked wheel cache: every artifact is stored under its own sha256 and checked
against the lock each time it is used; wheels built from sdists are cached by the sdist's
hash. Nothing whose bytes do not match the lock is ever handed to the installer. An artifact
the store lacks comes from the user's download cache (`dlcache`) when that holds it, else
it is downloaded there, and is linked into the store."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from .dlcache import ORIGIN, DownloadCache, checked_files, link_entry, listed
from .errors import BuildError, CacheIntegrityError, ToolError
from .fsutil import publish_dir, remove_tree
from .hashing import file_digest
from .interpreter import Interpreter
from .layout import digest_hex
from .lock import LockEntry
from .proc import hermetic_env, pip_argv, run_tool
from .recipe import Recipe
from .store import Store

if TYPE_CHECKING:
    from packaging.tags import Tag

    from .trust import Trust

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


# pip's words for a connection that failed, as opposed to an answer it did not like
_DOWNLOADING = re.compile(r"\s*Downloading (\S+) \(([^)]+)\)")
_NETWORK_TROUBLE = ("ConnectionError", "ReadTimeoutError", "Max retries exceeded",
                    "IncompleteRead", "Connection reset", "ProtocolError")
# a pure wheel for any Python 3 (`py3-none-any`, `py2.py3-none-any`): every interpreter
# envbuild builds for installs it (packaging's compatible_tags always hold py3-none-any)
_ANY_PY3 = re.compile(r"[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-[0-9][A-Za-z0-9_.]*)?"
                      r"-(py2\.)?py3-none-any\.whl")


def artifact_origin(wheel_dir: str) -> str | None:
    """The URL a cached artifact was downloaded from (credentials removed), if recorded."""
    try:
        with open(os.path.join(wheel_dir, ORIGIN), encoding="utf-8") as fh:
            url = json.load(fh).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


class Artifact(NamedTuple):
    entry: LockEntry
    artifact: Path          # the file the lock hashed (a wheel, or an sdist)
    sha256: str             # "sha256:<hex>" of `artifact`, one of the lock's hashes
    wheel: Path             # what gets installed: `artifact` itself, or the wheel built from it
    wheel_sha256: str
    hashed: bool = True     # False: found, not read (installed already): hash it before use


class WheelCache:
    def __init__(self, store: Store, interp: Interpreter, recipe: Recipe, offline: bool,
                 progress: Progress, downloads: DownloadCache | None = None,
                 installed: Callable[[str], bool] | None = None) -> None:
        """`installed`: whether a wheel (by its digest) is installed in the store already;
        such a wheel in the store's cache is found but not read (what the build uses is
        its installed tree), and is hashed only if it has to be installed again."""
        self.store, self.interp, self.recipe = store, interp, recipe
        self.offline, self.progress = offline, progress
        self.downloads = downloads if downloads is not None else DownloadCache()
        self.tags: set[Tag] | None = None   # computed by the first wheel that asks
        self.installed = installed
        self.unhashed: set[Path] = set()
        self.present: set[str] | None = None    # the store's wheel cache entries, if listed

    def fill(self, entries: list[LockEntry]) -> list[Artifact]:
        """One checked artifact per entry, downloading (or building) only what is missing."""
        found = self.fetch(entries)
        return [self._wheel_for(entry, *found[entry.name]) for entry in entries]

    def fetch(self, entries: list[LockEntry]) -> dict[str, tuple[Path, str]]:
        """Each entry's checked artifact as the lock hashed it (a wheel this interpreter
        accepts, else an sdist) and its digest, downloading only what is missing."""
        from concurrent.futures import ThreadPoolExecutor

        found: dict[str, tuple[Path, str]] = {}
        missing: list[LockEntry] = []
        shared = 0
        try:   # the lock names every platform's artifacts: most are not in the store
            self.present = set(os.listdir(self.store.layout.wheels))
        except OSError:
            self.present = set()
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            hits = list(pool.map(self._lookup, entries))   # hashing frees the GIL
        for entry, hit in zip(entries, hits):
            if hit is None:
                hit = self._lookup_shared(entry)
                shared += hit is not None
            if hit is None:
                missing.append(entry)
            else:
                found[entry.name] = hit
        if shared:
            self.progress(f"linked {shared} of {len(entries)} artifacts from the download "
                          f"cache {self.downloads.root}")
        if missing:
            if self.offline:
                names = ", ".join(f"{e.name}=={e.version}" for e in missing)
                raise CacheIntegrityError(f"--offline: expected every artifact in the wheel "
                                          f"cache or the download cache {self.downloads.root}"
                                          f", found none for {names}; build once without "
                                          "--offline to fill the cache")
            self.progress(f"downloading {len(missing)} of {len(entries)} artifacts")
            found.update(self._download(missing))
        return found

    def _lookup(self, entry: LockEntry, where: Callable[[str], str] | None = None
                ) -> tuple[Path, str] | None:
        """A cached artifact of the entry whose bytes match the lock, and its digest: in
        the store's wheel cache, or in the entry dirs `where` names."""
        candidates = [(path, digest) for digest in entry.hashes
                      for path in self._files(digest, where)]
        if (len(candidates) == 1 and where is None and candidates[0][0].suffix == ".whl"
                and self.installed is not None and self.installed(candidates[0][1])):
            # the only one there, and installed for this interpreter: an earlier build
            # chose it by its tags, as the check below would now (so no tags are computed)
            return candidates[0]
        wheels = [c for c in candidates if c[0].suffix == ".whl" and self._compatible(c[0].name)]
        sdists = [c for c in candidates if c[0].suffix != ".whl"]
        best = wheels or sdists
        return best[0] if best else None

    def _files(self, digest: str, where: Callable[[str], str] | None) -> list[Path]:
        """The cache entry's files: hashed now, or not read if the wheel is installed."""
        if where is not None:
            return checked_files(Path(where(digest)), digest, self.offline)
        if self.present is not None and digest_hex(digest) not in self.present:
            return []
        folder = Path(self.store.layout.wheel_dir(digest))
        if self.installed is not None and self.installed(digest):
            paths = listed(folder)
            if any(p.suffix == ".whl" for p in paths):
                self.unhashed.update(paths)
                return paths
        return checked_files(folder, digest, self.offline)

    def _lookup_shared(self, entry: LockEntry) -> tuple[Path, str] | None:
        """The entry's artifact from the download cache, checked there and linked into the
        store's wheel cache (hard links: one inode, checked once)."""
        hit = self._lookup(entry, self.downloads.layout.artifact_dir)
        if hit is None:
            return None
        path, digest = hit
        folder = Path(self.store.layout.wheel_dir(digest))
        link_entry(path.parent, folder, self.store.tmp)
        return folder / path.name, digest

    def _compatible(self, filename: str) -> bool:
        if _ANY_PY3.fullmatch(filename):   # (so a build of pure wheels computes no tags)
            return True
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename

        if self.tags is None:   # (threads may both compute it: the same answer)
            self.tags = self.interp.supported_tags()
        try:
            return bool(parse_wheel_filename(filename)[3] & self.tags)
        except InvalidWheelFilename:
            return False

    def _index_args(self, command: str) -> list[str]:
        """Where `pip command` finds artifacts, and which CAs it trusts there."""
        args = ["--index-url", self.recipe.index_url, *_trust(command).pip_args()]
        for link in self.recipe.find_links:
            args += ["--find-links", str(link)]
        return args

    def _pip(self, *args: str) -> list[str]:
        if not self.interp.foreign_platforms:
            return pip_argv("--python", self.interp.executable, *args)
        # an interpreter elsewhere (in an image): pip picks wheels for its tags; with
        # --no-deps an sdist comes as it is, to be built where that interpreter runs
        target = ["--python-version", ".".join(self.interp.version.split(".")[:2]),
                  "--implementation", self.interp.abi[:2], "--abi", self.interp.abi]
        for platform in self.interp.foreign_platforms:
            target += ["--platform", platform]
        return pip_argv(*args, *target)

    def _download(self, entries: list[LockEntry]) -> dict[str, tuple[Path, str]]:
        """pip downloads into the download cache's temp dir (the store's when that cannot
        be written); each checked file is published there, then linked into the store."""
        shared = self.downloads.scratch()
        tmp = shared or Path(tempfile.mkdtemp(prefix="download-", dir=self.store.tmp))
        try:
            reqs = tmp / "requirements.txt"
            reqs.write_text("".join(
                f"{e.name}=={e.version} " + " ".join(f"--hash={h}" for h in e.hashes) + "\n"
                for e in entries))
            argv = self._pip("download", "--no-deps", "--require-hashes", "--progress-bar",
                             "off", "--dest", str(tmp / "files"), "-r", str(reqs),
                             *self._index_args("download"))
            try:
                run_tool(argv, env=hermetic_env(), on_line=self._say_download)
            except ToolError as exc:
                if not any(sign in exc.output for sign in _NETWORK_TROUBLE):
                    raise
                # pip retries each request; a connection that broke mid-transfer is worth
                # one more pass (what did arrive is kept in --dest and not fetched again)
                self.progress("the index connection failed; trying the download once more")
                time.sleep(2)
                self._download_again(argv)
            by_hash = {h: e for e in entries for h in e.hashes}
            origins = self._origins(reqs, tmp, entries)
            got: dict[str, tuple[Path, str]] = {}
            for path in sorted((tmp / "files").iterdir()):
                digest = file_digest(str(path))
                entry = by_hash.get(digest)
                if entry is None:
                    raise BuildError(f"{path.name}: pip downloaded a file whose sha256 "
                                     f"{digest} is not in the lock")
                got[entry.name] = (self._adopt(path, digest, origins.get(digest),
                                               shared is not None), digest)
            return got
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _say_download(self, line: str) -> None:
        """pip's `Downloading NAME (SIZE)` lines as progress (its metadata fetches aside)."""
        found = _DOWNLOADING.match(line)
        if found and not found.group(1).endswith(".metadata"):
            self.progress(f"downloading {found.group(1).rsplit('/', 1)[-1]} "
                          f"({found.group(2)})")

    def _download_again(self, argv: list[str]) -> None:
        try:
            run_tool(argv, env=hermetic_env(), on_line=self._say_download)
        except ToolError as exc:
            from .pipfail import unreachable

            trust = _trust("download")
            raise (unreachable(exc.output, self.recipe.index_url, trust) or exc) from None

    def _origins(self, reqs: Path, tmp: Path, entries: list[LockEntry]) -> dict[str, str]:
        """{sha256: URL} of what pip just downloaded, from pip's installation report (a
        dry run: the files come from pip's HTTP cache), for `export --format pylock`. Only
        a record: a failure is logged, never fails the build. For an interpreter elsewhere
        (an image's), pip reports on wheels only (`--only-binary`, with an unused
        `--target`), so the entries that came as sdists are left out."""
        from .lock import redact_url

        report, extra = tmp / "report.json", []
        if self.interp.foreign_platforms:
            wheels = {file_digest(str(p)) for p in (tmp / "files").glob("*.whl")}
            reqs = tmp / "wheel-requirements.txt"
            reqs.write_text("".join(
                f"{e.name}=={e.version} " + " ".join(f"--hash={h}" for h in e.hashes) + "\n"
                for e in entries if wheels & set(e.hashes)))
            extra = ["--only-binary=:all:", "--target", str(tmp / "unused-target")]
            if not wheels:
                return {}
        try:
            run_tool(self._pip("install", "--dry-run", "--ignore-installed", "--no-deps",
                               "--require-hashes", "--quiet", "--progress-bar", "off",
                               "--report", str(report), "-r", str(reqs), *extra,
                               *self._index_args("install")), env=hermetic_env())
            items = json.loads(report.read_text(encoding="utf-8"))["install"]
            return {f"sha256:{item['download_info']['archive_info']['hashes']['sha256']}":
                    redact_url(item["download_info"]["url"]) for item in items}
        except (ToolError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("origin URLs of the downloads not recorded: %s", exc)
            return {}

    def _adopt(self, path: Path, digest: str, url: str | None, shared: bool) -> Path:
        """Move a checked download into its content-addressed place, with its origin: into
        the download cache and linked from there into the store (`shared`), else into the
        store."""
        folder = Path(self.store.layout.wheel_dir(digest))
        scratch = self.downloads.layout.tmp if shared else self.store.tmp
        staging = Path(tempfile.mkdtemp(prefix="adopt-", dir=scratch))
        os.replace(path, staging / path.name)
        if url:
            (staging / ORIGIN).write_text(json.dumps({"url": url}), encoding="utf-8")
        if shared:
            source = self.downloads.publish(staging, path.name, digest)
            link_entry(source, folder, self.store.tmp)
            if source == staging:
                remove_tree(staging)
        elif not publish_dir(staging, folder):
            remove_tree(staging)
        return folder / path.name

    def _wheel_for(self, entry: LockEntry, path: Path, digest: str) -> Artifact:
        """`digest` was checked against the lock when `path` was looked up or downloaded;
        pip checks the installed wheel's hash once more (--require-hashes)."""
        if path.suffix == ".whl":
            return Artifact(entry, path, digest, path, digest, path not in self.unhashed)
        wheel, wheel_digest = self._built_wheel(path, digest)
        return Artifact(entry, path, digest, wheel, wheel_digest)

    def _built_wheel(self, sdist: Path, digest: str) -> tuple[Path, str]:
        """The wheel built from `sdist` for this interpreter, built once and then reused."""
        folder = Path(self.store.layout.built_dir(digest, self.interp.abi,
                                                  self.interp.platform))
        record = folder / "wheel.sha256"
        if record.exists():
            wheel_digest, _, name = record.read_text().partition(" ")
            wheel = folder / name
            if wheel.exists() and file_digest(str(wheel)) == wheel_digest:
                return wheel, wheel_digest
            log.warning("%s: the wheel built from %s changed; building it again", folder,
                        sdist.name)
            remove_tree(folder)
        self.progress(f"building a wheel from {sdist.name}")
        staging = Path(tempfile.mkdtemp(prefix="wheel-", dir=self.store.tmp))
        try:
            index = ["--no-index"] if self.offline else self._index_args("wheel")
            trust = {} if self.offline else _trust("wheel").pip_env()
            try:
                run_tool(self._pip("wheel", "--no-deps", "--progress-bar", "off",
                                   "--wheel-dir", str(staging), str(sdist), *index),
                         env=hermetic_env({"SOURCE_DATE_EPOCH": "315532800", **trust}))
            except ToolError as exc:
                tail = "\n".join(exc.output.strip().splitlines()[-8:])
                raise BuildError(f"{sdist.name}: expected to build a wheel of it for Python "
                                 f"{self.interp.version}, found pip failing (a compiler, "
                                 f"headers or a build dependency missing?):\n{tail}") from None
            wheels = list(staging.glob("*.whl"))
            if len(wheels) != 1:
                raise BuildError(f"{sdist.name}: expected one wheel from the build, found "
                                 f"{len(wheels)}")
            wheel_digest = file_digest(str(wheels[0]))
            (staging / "wheel.sha256").write_text(f"{wheel_digest} {wheels[0].name}")
            if not publish_dir(staging, folder):
                remove_tree(staging)
                return self._built_wheel(sdist, digest)
        except BaseException:
            remove_tree(staging)
            raise
        return folder / wheels[0].name, wheel_digest


def _trust(command: str) -> Trust:
    """`find_trust`, imported (with the pip config reader it needs) only when pip goes to
    the index: a build from the store's wheels never does."""
    from .trust import find_trust

    return find_trust(command)
