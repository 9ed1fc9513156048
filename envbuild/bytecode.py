"""Bytecode for a new env: checked-hash pycs, compiled with the build dir stripped and a
fixed PYTHONHASHSEED, so they are the same bytes in every build. An installed tree's pycs
are kept by the path and source they come from (`pycs/by-source-<abi>-<version>/`, hard
links) and linked into the next tree with the same module; with `--installer pip` each
wheel's pycs are kept in `pycs/<wheel sha256>-<abi>-<version>/` and copied by the next
build that installs that wheel."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ToolError
from .fsutil import publish_dir, remove_tree
from .hashing import sha256_bytes
from .interpreter import Interpreter
from .layout import digest_hex
from .proc import hermetic_env
from .store import Store
from .wheelcache import Artifact

log = logging.getLogger(__name__)

SOURCE_PYCS = "by-source-"   # pycs/<this><abi>-<version>/: trees' pycs by path and source

# Runs in the target interpreter: compiles the files named on stdin (in parallel where
# there are more than a few); a line is
# "MODE\tSTRIP\tPATH", MODE C (checked-hash pyc) or U (unchecked-hash), STRIP the dir whose
# path is left out of the pyc's file name. Each file as `compileall.compile_file(PATH,
# stripdir=STRIP)` compiles it (the same `py_compile.compile` call), without importing
# compileall: its imports are a third of this process's start, on a rebuild's critical
# path. From 3.11, by py_compile's own steps without importing py_compile either (another
# 12 ms): what else a process imported changes a pyc only through the one-character
# strings it interned (one object each in a process), and py_compile's imports intern
# letters alone, which the compile interns anyway (before 3.11 they intern `{` and `}`).
# Before 3.11 marshal also marks a string as shared by its count of references, so what
# else the process holds decides the bytes: one by one there, never in a pool (whose
# imports would change them), so a module's pyc is the same however many are compiled.
_COMPILE = r"""
import os, sys
SINCE_311 = sys.version_info >= (3, 11)   # (see above)
if SINCE_311:
    import _imp
    import _frozen_importlib_external as steps
    def one(line):
        mode, strip, path = line.split("\t", 2)
        dfile = os.path.relpath(path, strip)
        try:   # as py_compile.compile: the code and dfile held here, as marshal counts them
            loader = steps.SourceFileLoader("<py_compile>", path)
            source = loader.get_data(path)
            code = loader.source_to_code(source, dfile)
            pyc = steps.cache_from_source(path)
            os.makedirs(os.path.dirname(pyc), exist_ok=True)
            digest = _imp.source_hash(steps._RAW_MAGIC_NUMBER, source)
            data = steps._code_to_hash_pyc(code, digest, mode == "C")
            steps._write_atomic(pyc, data, steps._calc_mode(path))
        except Exception as exc:
            print(f"{dfile}: {type(exc).__name__}: {exc}", flush=True)
            return False
        return True
else:
    import py_compile
    from importlib.util import cache_from_source
    MODES = {"C": py_compile.PycInvalidationMode.CHECKED_HASH,
             "U": py_compile.PycInvalidationMode.UNCHECKED_HASH}
    def one(line):
        mode, strip, path = line.split("\t", 2)
        try:
            py_compile.compile(path, cache_from_source(path), os.path.relpath(path, strip),
                               True, invalidation_mode=MODES[mode])
        except (py_compile.PyCompileError, OSError) as exc:
            print(exc.msg if isinstance(exc, py_compile.PyCompileError) else exc, flush=True)
            return False
        return True
files = sys.stdin.read().splitlines()
if len(files) > 16 and SINCE_311:
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor() as pool:
        ok = all(pool.map(one, files, chunksize=max(1, len(files) // 64)))
else:   # a pool's start costs more than a few files take
    ok = all([one(path) for path in files])
if ok:
    print(DONE)
sys.exit(0 if ok else 1)
"""
# the compile's last line when every file compiled: where SIGCHLD is ignored, the kernel
# reaps the process unseen and its exit status reads 0 whatever it was
DONE = "envbuild: compiled"


class Compiler:
    """`python` compiling files into its own bytecode (-S: no site, so no .pth line runs),
    with a fixed PYTHONHASHSEED: started first, so that its start and imports overlap
    what the caller does before it knows the files; killed on leaving if still running.
    Always a process of its own, even where `python` runs this: marshal writes a string as
    interned or not by the state of the process (a one-character string is one object
    there, interned once anything interned it), so this process's pycs could differ."""

    def __init__(self, python: str) -> None:
        import subprocess  # here: a build that compiles nothing does not import it

        self.argv = [python, "-S", "-c", f"DONE = {DONE!r}\n{_COMPILE}"]
        self.child = subprocess.Popen(
            self.argv, env=hermetic_env({"PYTHONHASHSEED": "0"}), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")

    def start(self, jobs: list[tuple[str, str, str]]) -> None:
        """Hand it each (mode, strip dir, path) to compile, without waiting (it reads them
        all before it writes anything)."""
        assert self.child.stdin is not None
        try:
            with self.child.stdin as feed:
                feed.write("\n".join("\t".join(job) for job in jobs))
        except BrokenPipeError:
            pass   # it ended early: `wait` says why

    def wait(self) -> None:
        """Until it has compiled what `start` gave it; a ToolError if it failed."""
        assert self.child.stdout is not None
        output = self.child.stdout.read()
        if self.child.wait() != 0 or not output.endswith(DONE + "\n"):
            raise ToolError(self.argv, self.child.returncode or 1, output)

    def run(self, jobs: list[tuple[str, str, str]]) -> None:
        self.start(jobs)
        self.wait()

    def __enter__(self) -> Compiler:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        for pipe in (self.child.stdin, self.child.stdout):
            if pipe is not None:
                pipe.close()


def compile_files(python: str, jobs: list[tuple[str, str, str]]) -> None:
    """Compile each (mode, strip dir, path) with `python` (`Compiler`)."""
    if jobs:
        with Compiler(python) as compiler:
            compiler.run(jobs)


def compile_early(compiler: Compiler, wheels: list[Path], site: str, cache_tag: str,
                  by_source: str, scratch: Path) -> list[tuple[Path, str]]:
    """The wheels' modules whose pyc is not kept yet (`by_source`), read from the wheels,
    written under `scratch` at their place in a tree and handed to `compiler` at once, to
    compile while the wheels are installed: what to keep (`keep`) once it is done."""
    import zipfile

    jobs: list[tuple[str, str, str]] = []
    fresh: list[tuple[Path, str]] = []
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as zf:
                modules = [(site_rel, zf.read(name))
                           for name, site_rel in _wheel_modules(zf.namelist())]
        except (OSError, zipfile.BadZipFile) as exc:
            log.debug("%s: not read ahead: %s", wheel, exc)   # the installer says what
            continue
        for site_rel, data in modules:
            rel = f"{site}/{site_rel}"
            kept = _kept_path(by_source, rel, data)
            if os.path.exists(kept):
                continue
            path = scratch / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            jobs.append(("C", str(scratch), str(path)))
            fresh.append((_pyc(path, cache_tag), kept))
    compiler.start(jobs)
    return fresh


def keep(fresh: list[tuple[Path, str]], by_source: str) -> None:
    """Each freshly compiled pyc linked at its kept path, for the next tree."""
    if fresh:
        os.makedirs(by_source, exist_ok=True)
    for pyc, kept in fresh:
        try:
            os.link(pyc, kept)
        except FileExistsError:
            pass   # another build kept the same bytes
        except OSError as exc:
            log.debug("%s not kept: %s", pyc, exc)


def compile_trees(python: str, roots: list[Path], site: str, cache_tag: str,
                  by_source: str) -> None:
    """Every .py in each root's site-packages given its checked-hash pyc: linked from
    `by_source` (the store's pycs by source and path) where the same source at the same
    path was compiled before (by `compile_early`, or for another release, since a release
    that leaves a module as it was leaves its pyc as it was too); the rest compiled, and
    kept there for the next build."""
    jobs: list[tuple[str, str, str]] = []
    fresh: list[tuple[Path, str]] = []
    for root in roots:
        for path in (root / site).rglob("*.py"):
            pyc = _pyc(path, cache_tag)
            kept = _kept_path(by_source, path.relative_to(root).as_posix(), path.read_bytes())
            if not _link_kept(kept, pyc):
                jobs.append(("C", str(root), str(path)))
                fresh.append((pyc, kept))
    compile_files(python, jobs)
    keep(fresh, by_source)


def source_pycs_dir(store: Store, interp: Interpreter) -> str:
    """Checked-hash pycs by the source they were compiled from and its path in the tree
    (`_kept_path`), for one interpreter: a new release that leaves a module as it was
    takes its pyc from here instead of compiling it again."""
    return os.path.join(store.layout.pycs, f"{SOURCE_PYCS}{interp.abi}-{interp.pyc_version}")


def _kept_path(by_source: str, rel: str, source: bytes) -> str:
    """Where the pyc of `source` at `rel` (in a tree) is kept: named by what decides a
    checked-hash pyc's bytes, for one interpreter, the source and its path (which the pyc
    names, the build dir stripped)."""
    return os.path.join(by_source, digest_hex(sha256_bytes(rel.encode() + b"\0" + source)))


def _link_kept(kept: str, pyc: Path) -> bool:
    """The kept pyc linked at `pyc`; False if there is none (or it cannot be linked)."""
    if not os.path.exists(kept):
        return False
    try:
        pyc.parent.mkdir(exist_ok=True)
        os.link(kept, pyc)
    except OSError as exc:
        log.debug("%s not linked: %s", kept, exc)
        return False
    return True


def compile_env(root: Path, site: str, artifacts: list[Artifact], interp: Interpreter,
                store: Store) -> None:
    """Give every .py in site-packages its checked-hash pyc, from the store's pyc cache
    where a wheel's pycs are there, compiling the rest and caching them per wheel."""
    site_dir = root / site
    fresh: list[tuple[Artifact, list[str]]] = []
    for art in artifacts:
        sources = wheel_sources(art.wheel)
        cached = _entry(store, art, interp)
        if cached.is_dir():
            _copy_into(cached, site_dir)
        else:
            fresh.append((art, sources))
    compile_files(str(root / "bin" / "python"),
                  [("C", str(root), str(p)) for p in site_dir.rglob("*.py")
                   if not _pyc(p, interp.cache_tag).exists()])
    for art, sources in fresh:
        _keep(store, _entry(store, art, interp), site_dir, sources, interp.cache_tag,
              art.wheel.name)


def compile_launch(root: Path, launch_code: Path, interp: Interpreter, store: Store) -> None:
    """The launch code's pycs, unchecked-hash: it runs at every launch before the check has
    finished, and Python would otherwise read and hash each of its sources first. The
    quick level checks those pycs' owners and modes; files and full, their bytes and their
    sources'. Kept in the store's pyc cache by the launch code's digest."""
    from .carried import launcher_digest

    cached = Path(store.layout.pyc_dir(launcher_digest(), interp.abi, interp.pyc_version))
    if cached.is_dir():
        _copy_into(cached, launch_code)
        return
    sources = sorted(launch_code.rglob("*.py"))
    compile_files(interp.executable, [("U", str(root), str(p)) for p in sources])
    _keep(store, cached, launch_code, [p.relative_to(launch_code).as_posix() for p in sources],
          interp.cache_tag, "the launch code")


def wheel_sources(wheel: Path) -> list[str]:
    """The .py files a wheel installs into site-packages, relative to it."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        return [site_rel for _name, site_rel in _wheel_modules(zf.namelist())]


def _wheel_modules(names: list[str]) -> list[tuple[str, str]]:
    """Of a wheel's member names, the .py files it installs into site-packages: each with
    its path there (a name that would leave site-packages is left to the installer)."""
    out = []
    for name in names:
        if not name.endswith(".py"):
            continue
        parts = name.split("/")
        if parts[0].endswith(".data"):
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue
            parts = parts[2:]
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            continue
        out.append((name, "/".join(parts)))
    return out


def _copy_into(src: Path, dst: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(src):
        target = dst / os.path.relpath(dirpath, src)
        target.mkdir(exist_ok=True)
        for name in filenames:
            shutil.copyfile(os.path.join(dirpath, name), target / name)


def _pyc(source: Path, cache_tag: str) -> Path:
    return source.parent / "__pycache__" / f"{source.stem}.{cache_tag}.pyc"


def _entry(store: Store, art: Artifact, interp: Interpreter) -> Path:
    return Path(store.layout.pyc_dir(art.wheel_sha256, interp.abi, interp.pyc_version))


def _keep(store: Store, entry: Path, src_dir: Path, sources: list[str], cache_tag: str,
          what: str) -> None:
    """Keep freshly compiled pycs of `sources` (relative to `src_dir`) at `entry` for the
    next build; best effort."""
    os.makedirs(store.layout.pycs, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="pycs-", dir=store.tmp))
    try:
        for rel in sources:
            pyc = _pyc(src_dir / rel, cache_tag)
            if pyc.exists():
                dest = staging / pyc.relative_to(src_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pyc, dest)
                dest.chmod(0o444)
        os.chmod(staging, 0o755)
        if publish_dir(staging, entry):
            return
    except OSError as exc:
        log.warning("pycs of %s not cached: %s", what, exc)
    remove_tree(staging)
