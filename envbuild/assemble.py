"""An env's assembly in a temporary dir: the venv, the installs (offline, hash-checked),
relocation, bytecode, read-only modes and the sealed manifest. Only a build that does not
reuse an env imports this."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .build import Progress
from .bytecode import compile_env, compile_launch
from .carried import HOOK_PTH, TRAMPOLINE, hook_line, install_launcher
from .fsutil import publish_dir, remove_tree, shares_by_size
from .hashing import record_digest, sha256_bytes
from .hostreq import scan
from .interpreter import Interpreter
from .layout import LAUNCH_DIR, digest_hex
from .lock import Lock
from .manifest import (
    Distribution,
    InterpreterRecord,
    LaunchPolicy,
    Manifest,
    RecordMismatch,
    canonical,
    seal,
)
from .proc import hermetic_env, pip_argv, run_tool
from .recipe import Recipe
from .startup import startup_of
from .store import Store
from .treeinstall import Installing, install_trees
from .trees import Tree, TreeDamaged, installed, link_trees, load_trees, tree_places
from .wheelcache import Artifact


def assemble(tmp: Path, recipe: Recipe, lock: Lock, interp: Interpreter,
             artifacts: list[Artifact], key: str, store: Store, progress: Progress,
             fixed_time: str | None = None, link: str | None = None) -> None:
    """The env of `artifacts` built in `tmp`, sealed with its manifest, read-only: its
    files linked from the store's trees by `link` (hardlink, reflink or copy), or with
    `link` None installed by pip (the reference installer)."""
    progress(f"creating a venv for Python {interp.version}")
    places, there = [], []   # each artifact's tree's place, and that place if it is there
    if link is not None:
        places, has = tree_places(store, artifacts, interp), installed(store, interp)
        there = [where if has(art.wheel_sha256) else None
                 for art, where in zip(artifacts, places)]
    absent = [(art, where) for art, where, seen in zip(artifacts, places, there) if not seen]
    if absent:   # installed by forked children while the other trees' files go in place
        progress(f"installing {len(absent)} of {len(artifacts)} wheels into the store "
                 "(once per wheel and Python)")
        os.makedirs(store.layout.trees, exist_ok=True)
    installing = Installing.start(store, absent, interp) if absent else None
    try:
        with ThreadPoolExecutor(1) as pool:   # the trees' records are read meanwhile
            venv = pool.submit(_venv, tmp, interp, recipe.name, store)
            trees = load_trees(there)
            venv.result()
        linked = None
        if link is None:
            progress(f"installing {len(artifacts)} distributions (offline, hash-checked)")
            _install(tmp, artifacts, store.tmp)
        install_launcher(tmp, interp)
        _relocate(tmp, interp)
        compile_launch(tmp, tmp / LAUNCH_DIR, interp, store)
        if link is None:
            progress("compiling bytecode")
            compile_env(tmp, interp.site, artifacts, interp, store)
        else:
            _normalize_files(tmp)   # the venv's and the launch code's; the trees' come right
            progress(f"putting {len(artifacts)} distributions in place from the store "
                     f"({link})")
            linked = link_trees([t for t in trees if t is not None], tmp, link)
            if installing is not None or None in trees:
                linked = link_trees(_all_trees(store, artifacts, interp, places, trees,
                                               installing), tmp, link, placed=linked)
        installing = None
    finally:
        if installing is not None:
            installing.reap()
    startup = startup_of(tmp, interp.site, venv.result())   # before the hook, which refuses
    if recipe.launch_hook:
        (tmp / interp.site / HOOK_PTH).write_text(hook_line())
        (tmp / interp.site / HOOK_PTH).chmod(0o444)
    if link is None:
        _normalize_files(tmp)
    progress("writing the manifest")
    draft = Manifest(
        name=recipe.name, env_key=key,
        inputs={"recipe": recipe.digest, "lock": sha256_bytes(lock.text.encode())},
        interpreter=InterpreterRecord(
            implementation=interp.implementation, version=interp.version, abi=interp.abi,
            platform=interp.platform, libc=interp.libc, path=interp.executable,
            sha256=interp.sha256, stdlib_digest=interp.stdlib_digest,
            libpython=interp.libpython),
        distributions=tuple(sorted((Distribution(a.entry.name, a.entry.version,
                                                 a.artifact.name, a.sha256)
                                    for a in artifacts), key=lambda d: d.name)),
        environment=recipe.environment, host_optional=recipe.host_optional,
        launch=LaunchPolicy(hook=recipe.launch_hook, root=recipe.launch_root,
                            record_environment=recipe.launch_record))
    try:
        seal(tmp, draft, interp.site, str(tmp).encode(),
             lambda root, paths: scan(root, paths, linked.elf if linked else None),
             stdlib_landmark=os.path.join(interp.stdlib, "os.py"), startup=startup,
             fixed_time=fixed_time, recipe_path=recipe.path,
             known=linked.known if linked else None,
             skip=set(linked.dirs) if linked else frozenset())
    except RecordMismatch as exc:
        if linked is None:
            raise
        raise TreeDamaged({linked.source[exc.rel]: exc.rel}) from None
    _freeze_dirs(tmp, linked.dirs if linked else ())


def _all_trees(store: Store, artifacts: list[Artifact], interp: Interpreter,
               places: list[Path], trees: list[Tree | None], installing: Installing | None
               ) -> list[Tree]:
    """Every artifact's tree, in order: those `installing` installs once it ends, and any
    found damaged meanwhile (removed, so `load_trees` gave None) installed again here."""
    done = installing.wait() if installing is not None else {}
    again = [(art, where) for art, where, tree in zip(artifacts, places, trees)
             if tree is None and art.wheel_sha256 not in done]
    if again:
        done.update(install_trees(store, again, interp))
    return [tree if tree is not None else done[art.wheel_sha256]
            for art, tree in zip(artifacts, trees)]


def _install(tmp: Path, artifacts: list[Artifact], store_tmp: Path) -> None:
    """pip, offline, one pinned and hashed wheel per distribution, nothing else considered.

    With --no-deps the wheels are independent, so a few pips install shares of them at
    once (pip itself installs one wheel after another).
    """
    shares = shares_by_size(artifacts, lambda a: a.wheel.stat().st_size,
                            min(4, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="install-", dir=store_tmp) as work:
        with ThreadPoolExecutor(max(1, len(shares))) as pool:
            # list() re-raises the first failure
            list(pool.map(lambda n: _install_share(tmp, Path(work) / str(n), shares[n]),
                          range(len(shares))))


def _install_share(tmp: Path, work: Path, artifacts: list[Artifact]) -> None:
    links = work / "wheels"
    links.mkdir(parents=True)
    lines = []
    for art in artifacts:
        os.symlink(art.wheel, links / art.wheel.name)
        lines.append(f"{art.entry.name}=={art.entry.version} --hash={art.wheel_sha256}\n")
    reqs = work / "requirements.txt"
    reqs.write_text("".join(lines))
    run_tool(pip_argv("--python", str(tmp / "bin" / "python"), "install", "--no-index",
                      "--no-deps", "--require-hashes", "--no-compile", "--no-cache-dir",
                      "--no-warn-script-location", "--progress-bar", "off",
                      "--find-links", str(links), "-r", str(reqs)),
             env=hermetic_env())


def _relocate(tmp: Path, interp: Interpreter) -> None:
    """Remove every absolute path into the build dir, so the env works wherever it is moved."""
    prefix = str(tmp).encode()
    rewritten: dict[str, bytes] = {}
    bin_dir = tmp / "bin"
    for path in sorted(bin_dir.iterdir()):
        if path.is_symlink() or not path.is_file():
            continue
        new = _retarget_script(path.read_bytes(), prefix)
        if new is not None:
            path.write_bytes(new)
            rewritten[f"bin/{path.name}"] = new
    _update_records(tmp / interp.site, tmp, rewritten)   # the venv came relocated (_venv)


VENV_FORMAT = "1"   # what an empty venv in the store holds; a change makes new ones


def _venv(tmp: Path, interp: Interpreter, prompt: str, store: Store) -> Path:
    """`python -m venv --without-pip --prompt PROMPT` at `tmp`, relocated: copied from the
    store's empty venv of this interpreter and prompt (returned), made there once. What venv
    writes names its dir only where `_relocate_venv` takes it out, so the copy is the same
    bytes."""
    key = sha256_bytes(canonical({"format": VENV_FORMAT, "interpreter": interp.identity(),
                                  "prompt": prompt}))
    final = Path(store.layout.venv_dir(digest_hex(key)[:32]))
    if not final.is_dir():
        os.makedirs(store.layout.venvs, exist_ok=True)
        # made in the store's scratch dir: what a kill -9 leaves there, gc removes
        made = Path(tempfile.mkdtemp(prefix="venv-", dir=store.tmp))
        try:
            os.chmod(made, 0o755)    # as venv makes it: other users of the store copy it
            run_tool([interp.executable, "-I", "-m", "venv", "--without-pip", "--prompt",
                      prompt, str(made)], env=hermetic_env())
            _relocate_venv(made)
            if not publish_dir(made, final):   # another build made it first
                remove_tree(made)
        except BaseException:
            remove_tree(made)
            raise
    shutil.copytree(final, tmp, symlinks=True, dirs_exist_ok=True)
    return final


def _relocate_venv(tmp: Path) -> None:
    """What venv writes that names its dir, made relative or taken out."""
    bin_dir = tmp / "bin"
    _relocate_activate(bin_dir, str(tmp))
    # csh cannot find its own script's path; rather no activate.csh than a wrong one
    (bin_dir / "activate.csh").unlink(missing_ok=True)
    cfg = tmp / "pyvenv.cfg"
    cfg.write_text("".join(line for line in cfg.read_text().splitlines(True)
                           if not line.startswith("command = ")))


def _retarget_script(data: bytes, prefix: bytes) -> bytes | None:
    """The script with its interpreter line made relative; None if it names no env interpreter.

    Installers write `#!/abs/python`, or, when that path is too long for the kernel
    (over 127 bytes) or holds a space, a `/bin/sh` preamble that execs it: both are replaced.
    """
    first, _, rest = data.partition(b"\n")
    if first.startswith(b"#!") and prefix in first:
        return TRAMPOLINE + rest
    if first == b"#!/bin/sh":
        second, _, after = rest.partition(b"\n")
        third, _, body = after.partition(b"\n")
        if second.startswith(b"'''exec' ") and prefix in second and third == b"' '''":
            return TRAMPOLINE + body
    return None


# How each activate script finds the env from its own path (Activate.ps1 already does).
_ACTIVATE_HERE = {
    "activate": '"$(cd "$(dirname -- "${BASH_SOURCE[0]:-$0}")/.." && pwd)"',
    "activate.fish": "(builtin realpath (dirname (status -f))/..)",
}


def _relocate_activate(bin_dir: Path, env_dir: str) -> None:
    """Replace the env's path wherever an activate script names it: venv writes it quoted
    or not (shlex-quoted since the gh-124651 fix), in one `VIRTUAL_ENV=` line up to 3.11
    and in both branches of a cygwin/msys test (`export VIRTUAL_ENV=`, `$(cygpath ...)`)
    from 3.12 on."""
    here = re.escape(env_dir)
    written = re.compile(f'"{here}"|\'{here}\'|{here}(?![\\w./-])')
    for name, expression in _ACTIVATE_HERE.items():
        path = bin_dir / name
        if path.is_file():
            path.write_text(written.sub(expression.replace("\\", "\\\\"), path.read_text()))


def _update_records(site: Path, root: Path, rewritten: dict[str, bytes]) -> None:
    """Keep RECORD's hashes true for the scripts rewritten above."""
    if not rewritten:
        return
    import csv

    for record in site.glob("*.dist-info/RECORD"):
        rows = list(csv.reader(io.StringIO(record.read_text())))
        changed = False
        for row in rows:
            if not row:
                continue
            rel = os.path.relpath(os.path.normpath(site / row[0]), root)
            if rel in rewritten:
                data = rewritten[rel]
                row[1:3] = [record_digest(data), str(len(data))]
                changed = True
        if changed:
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(rows)
            record.write_text(out.getvalue())


def _normalize_files(root: Path) -> None:
    """Read-only files: 0555 where any execute bit was set, else 0444 (a file that has its
    mode already, such as one linked from the store, is left alone)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            mode = 0o555 if st.st_mode & 0o111 else 0o444
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)


def _freeze_dirs(root: Path, made: Collection[str] = ()) -> None:
    """Read-only dirs. The dirs in `made` (relative; made for the trees' files, so every dir
    under one of them is in it too) are set from that list; the walk skips them."""
    for rel in made:
        os.chmod(os.path.join(root, rel), 0o555)
    skip = set(made)
    for dirpath, dirnames, _ in os.walk(root):
        here = os.path.relpath(dirpath, root)
        walked = []
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if (name if here == "." else f"{here}/{name}") in skip or os.path.islink(path):
                continue
            os.chmod(path, 0o555)
            walked.append(name)
        dirnames[:] = walked
    os.chmod(root, 0o555)
