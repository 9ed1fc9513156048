"""`envbuild build` end to end: real pip against the local index, real subprocesses, real
kill -9. Every test that builds uses its own store under tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, copy_env, envbuild, write_recipe
from pkgindex import LocalIndex, write_wheel

from envbuild.storegc import gc

MANIFEST = "envbuild-manifest.json"
OTHER_PYTHON = "/usr/bin/python3.11"


# ---- helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Path:
    """The demo recipe, locked once for this module. Tests must not edit it."""
    recipe = write_recipe(tmp_path_factory.mktemp("locked"), index)
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    return recipe


def lock(recipe: Path) -> Path:
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    return recipe.with_suffix(".lock")


def build_json(recipe: Path, store: Path, *args: str | Path,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    res = envbuild("build", recipe, "--store", store, "--json", *args, env=env)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    info: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return info


def verify_full(env: Path | str) -> None:
    res = cli("verify", env, "--level", "full")
    assert res.exit_code == 0, res.stdout + res.stderr


def lock_hashes(lock_path: Path) -> dict[str, str]:
    """{name: "sha256:<hex>"} read independently of envbuild's own lock reader."""
    text = re.sub(r"\\\n\s*", " ", lock_path.read_text())
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s+--hash=(sha256:[0-9a-f]{64})",
                     line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
    return out


def env_dirs(store: Path) -> list[str]:
    envs = store / "envs"
    return sorted(os.listdir(envs)) if envs.is_dir() else []


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()] \
        if root.is_dir() else []


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path under root (root included) with inode, mode, size and mtime_ns."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_ino, st.st_mode, st.st_size,
                                                st.st_mtime_ns)
    return out


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def cached_artifact(store: Path, digest: str) -> Path:
    folder = store / "wheels" / digest.removeprefix("sha256:")
    found = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    assert len(found) == 1, found
    return found[0]


def clean_env(*drop: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in drop}


# ---- output, key, cache hit -----------------------------------------------------------


@pytest.mark.slow
def test_build_prints_path_and_json_and_second_build_is_a_cache_hit(
        locked: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = envbuild("build", locked, "--store", store)
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path.is_absolute() and (path / MANIFEST).is_file()

    # the first build left nothing in the store's tmp/
    assert files_under(store / "tmp") == []
    tmp_before = sorted(os.listdir(store / "tmp"))
    envs_before = env_dirs(store)
    env_before = snapshot(path)
    wheels_before = snapshot(store / "wheels")

    info = build_json(locked, store)
    assert set(info) >= {"path", "env_key", "manifest_digest", "cached"}
    assert info["cached"] is True
    assert Path(info["path"]) == path
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", info["env_key"])
    assert path == (store / "envs" / f"demo-{info['env_key'][7:23]}").absolute()
    manifest = (path / MANIFEST).read_bytes()
    assert info["manifest_digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert json.loads(manifest)["env_key"] == info["env_key"]

    # no install happened: the env, the envs dir, the wheel cache and tmp/ are untouched
    assert snapshot(path) == env_before
    assert env_dirs(store) == envs_before == [path.name]
    assert sorted(os.listdir(store / "tmp")) == tmp_before
    assert snapshot(store / "wheels") == wheels_before


# ---- missing and stale locks ----------------------------------------------------------


def test_missing_lock_is_an_error_and_creates_nothing(index: LocalIndex,
                                                      tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", index)
    store = tmp_path / "store"
    res = envbuild("build", recipe, "--store", store)
    assert res.returncode == 2, res.stderr
    assert "envbuild lock" in res.stderr
    assert not recipe.with_suffix(".lock").exists()   # never silently re-locked
    assert env_dirs(store) == []
    assert files_under(store) == []


def test_stale_lock_is_an_error_and_builds_nothing(index: LocalIndex, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", index)
    lock_path = lock(recipe)
    lock_text = lock_path.read_text()
    recipe.write_text(recipe.read_text() + '[environment]\nset = { OMP_NUM_THREADS = "2" }\n')
    store = tmp_path / "store"
    res = envbuild("build", recipe, "--store", store)
    assert res.returncode == 2, res.stderr
    assert "stale" in res.stderr and "envbuild lock" in res.stderr
    assert lock_path.read_text() == lock_text          # never silently re-locked
    assert env_dirs(store) == []
    assert files_under(store / "wheels") == []


@pytest.mark.parametrize("first_line,says", [
    ("# envbuild.lock/2", "newer than this envbuild understands"),
    ("alpha==2.0", "not an envbuild lock"),
])
def test_lock_of_another_format_is_refused(index: LocalIndex, tmp_path: Path,
                                           first_line: str, says: str) -> None:
    recipe = write_recipe(tmp_path / "r", index)
    lock_path = lock(recipe)
    rest = lock_path.read_text().split("\n", 1)[1]
    lock_path.write_text(f"{first_line}\n{rest if first_line.startswith('#') else ''}")
    store = tmp_path / "store"
    res = envbuild("build", recipe, "--store", store)
    assert res.returncode == 2, res.stderr
    assert says in res.stderr and str(lock_path) in res.stderr
    assert not store.exists()


def test_lock_made_for_another_python_is_refused(index: LocalIndex, tmp_path: Path) -> None:
    """The header names the Python the lock was resolved for; markers and wheels were
    chosen for it, so another Python's build is refused (the recipe itself is unchanged,
    so the lock is not stale)."""
    recipe = write_recipe(tmp_path / "r", index)
    lock_path = lock(recipe)
    text = lock_path.read_text()
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"# python: {here}" in text
    lock_path.write_text(text.replace(f"# python: {here}", "# python: 3.99", 1))
    store = tmp_path / "store"
    res = envbuild("build", recipe, "--store", store)
    assert res.returncode == 2, res.stderr
    assert f"{lock_path}: locked for Python 3.99" in res.stderr and "--python" in res.stderr
    assert not store.exists()


@pytest.mark.slow
def test_sdist_is_built_into_a_wheel_once_per_store(locked: Path, index: LocalIndex,
                                                    tmp_path: Path) -> None:
    """Another recipe that needs the same sdist reuses the wheel built from it."""
    store = tmp_path / "store"
    res = envbuild("build", locked, "--store", store)
    assert res.returncode == 0, res.stderr
    assert "building a wheel from sdistonly" in res.stderr
    [wheel] = store.glob("built/*/*.whl")
    before = wheel.stat()
    other = write_recipe(tmp_path / "other", index, ["sdistonly", "delta"], name="other")
    lock(other)
    res = envbuild("build", other, "--store", store)
    assert res.returncode == 0, res.stderr
    assert "building a wheel" not in res.stderr
    assert list(store.glob("built/*/*.whl")) == [wheel]
    after = wheel.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


class _FlakyIndex:
    """The local index over HTTP on 127.0.0.1, dropping the first `drops` connections that
    ask for a file (closed without an answer, as a proxy that resets does)."""

    def __init__(self, root: Path) -> None:
        import http.server
        import threading

        owner = self
        self.drops = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                if self.path.startswith("/files/") and owner.drops > 0:
                    owner.drops -= 1
                    self.close_connection = True
                    self.connection.close()
                    return
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_download_survives_a_connection_that_keeps_failing(index: LocalIndex,
                                                           tmp_path: Path) -> None:
    """pip retries each request 5 times; a build whose download still fails on connection
    errors tries the whole download once more (keeping what arrived) before giving up."""
    flaky = _FlakyIndex(index.root)
    try:
        recipe = write_recipe(tmp_path / "r", index, ["alpha", "delta"])
        recipe.write_text(recipe.read_text().replace(index.simple_url, flaky.url))
        lock(recipe)
        flaky.drops = 6          # more than pip's own retries of one request
        res = envbuild("build", recipe, "--store", tmp_path / "store")
        assert res.returncode == 0, res.stderr
        assert "trying the download once more" in res.stderr
        assert flaky.drops == 0
        # progress names each download with its size, as pip reports it
        assert re.search(r"envbuild: downloading alpha-2\.0-py3-none-any\.whl \(\d+(\.\d+)? "
                         r"[kM]?B\)", res.stderr), res.stderr
        verify_full(res.stdout.strip().splitlines()[-1])

        flaky.drops = 1000       # an index that never answers: the build fails, exit 1
        # (with a download cache of its own: the first build's holds everything)
        res = envbuild("build", recipe, "--store", tmp_path / "store2",
                       env={**os.environ, "ENVBUILD_CACHE": str(tmp_path / "cache2")})
        assert res.returncode == 1, res.stderr
        assert "found the connection broken mid-way" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert env_dirs(tmp_path / "store2") == []
    finally:
        flaky.close()


# ---- a corrupt wheel cache ------------------------------------------------------------


def _evil_wheel(tmp: Path) -> bytes:
    """A valid alpha 2.0 wheel, same file name, other content: pip would install it."""
    tmp.mkdir()
    name = write_wheel(str(tmp), "alpha", "2.0",
                       "Metadata-Version: 2.1\nName: alpha\nVersion: 2.0\n",
                       {"alpha/__init__.py": '__version__ = "EVIL"\n\n\ndef main():\n'
                                             '    print("EVIL")\n'},
                       "[console_scripts]\nalpha = alpha:main\n")
    return (tmp / name).read_bytes()


def _corrupt(path: Path, data: bytes | None = None) -> None:
    path.parent.chmod(path.parent.stat().st_mode | stat.S_IRWXU)
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    if data is None:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data = bytes(raw)
    path.write_bytes(data)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["pip", "damaged tree", "intact tree"])
def test_corrupt_cached_wheel_is_refetched_never_installed(index: LocalIndex, tmp_path: Path,
                                                           case: str) -> None:
    """A wheel about to be installed is hashed first: by pip's builds always, by the trees'
    when its tree has to be installed again. A wheel whose tree is intact is not read (the
    tree is what the env is made from): it stays as it is, and the env is still right."""
    first = write_recipe(tmp_path / "a", index)
    hashes = lock_hashes(lock(first))
    store = tmp_path / "store"
    build_json(first, store)
    alpha = cached_artifact(store, hashes["alpha"])
    assert alpha.name == "alpha-2.0-py3-none-any.whl"
    evil = _evil_wheel(tmp_path / "evil")
    _corrupt(alpha, evil)
    assert sha256_file(alpha) != hashes["alpha"]
    if case == "damaged tree":
        tree = next((store / "trees").glob(hashes["alpha"].removeprefix("sha256:") + "-*"))
        _corrupt(next(tree.glob("root/lib/python3.*/site-packages/alpha/__init__.py")),
                 b"# changed\n")

    # same dependencies, another recipe name: a new env key that needs alpha again
    second = write_recipe(tmp_path / "b", index, name="other")
    assert lock_hashes(lock(second)) == hashes
    res = envbuild("build", second, "--store", store, "--json",
                   *(["--installer", "pip"] if case == "pip" else []))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["cached"] is False
    if case == "intact tree":
        assert "warning" not in res.stderr.lower(), res.stderr
        assert sha256_file(alpha) != hashes["alpha"]
    else:
        assert "warning" in res.stderr.lower() and str(alpha) in res.stderr, res.stderr
        assert sha256_file(cached_artifact(store, hashes["alpha"])) == hashes["alpha"]

    env = Path(info["path"])
    assert env.name.startswith("other-")
    verify_full(env)
    for path in files_under(env):
        assert b"EVIL" not in path.read_bytes(), path
    out = subprocess.run([env / "bin" / "alpha"], capture_output=True, text=True, check=True)
    assert out.stdout == "alpha 2.0\n"
    with zipfile.ZipFile(index.wheel("alpha-2.0-py3-none-any.whl")) as whl:
        good = whl.read("alpha/__init__.py")
    site = next(env.glob("lib/python*/site-packages"))
    assert (site / "alpha" / "__init__.py").read_bytes() == good


@pytest.mark.slow
def test_corrupt_wheel_of_an_unreadable_tree_is_removed_not_installed(
        index: LocalIndex, tmp_path: Path) -> None:
    """A tree whose record cannot be read is installed again; its wheel, found but not read
    while the tree was there, is hashed first: a corrupt one is removed, named, and the
    next build fetches it anew."""
    first = write_recipe(tmp_path / "a", index)
    hashes = lock_hashes(lock(first))
    store = tmp_path / "store"
    build_json(first, store)
    alpha = cached_artifact(store, hashes["alpha"])
    _corrupt(alpha, _evil_wheel(tmp_path / "evil"))
    tree = next((store / "trees").glob(hashes["alpha"].removeprefix("sha256:") + "-*"))
    _corrupt(tree / "tree.json", b"{not json")
    second = write_recipe(tmp_path / "b", index, name="other")
    lock(second)
    res = envbuild("build", second, "--store", store)
    assert res.returncode == 2, res.stderr
    assert f"{alpha}: expected sha256 {hashes['alpha']}" in res.stderr, res.stderr
    assert "build again to fetch it anew" in res.stderr
    assert not alpha.exists()
    res = envbuild("build", second, "--store", store, "--json")
    assert res.returncode == 0, res.stderr
    assert sha256_file(cached_artifact(store, hashes["alpha"])) == hashes["alpha"]
    verify_full(Path(json.loads(res.stdout.strip().splitlines()[-1])["path"]))


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["pip", "trees"])
def test_corrupt_cached_wheel_offline_is_refused(index: LocalIndex, tmp_path: Path,
                                                 installer: str) -> None:
    first = write_recipe(tmp_path / "a", index)
    hashes = lock_hashes(lock(first))
    store = tmp_path / "store"
    build_json(first, store)
    alpha = cached_artifact(store, hashes["alpha"])
    _corrupt(alpha)
    corrupt = alpha.read_bytes()
    if installer == "trees":   # no tree of it left: the wheel has to be installed
        tree = next((store / "trees").glob(hashes["alpha"].removeprefix("sha256:") + "-*"))
        for path in [tree, *tree.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(tree)

    second = write_recipe(tmp_path / "b", index, name="other")
    lock(second)
    res = envbuild("build", second, "--store", store, "--offline", "--installer", installer)
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(alpha) in res.stderr, res.stderr
    assert [d for d in env_dirs(store) if not d.startswith("demo-")] == []
    # nothing was fetched to replace it either
    assert alpha.read_bytes() == corrupt


# ---- reproducibility ------------------------------------------------------------------


def test_offline_build_into_a_new_store_is_refused_and_leaves_nothing(
        locked: Path, tmp_path: Path) -> None:
    store = tmp_path / "new" / "store"
    res = envbuild("build", locked, "--store", store, "--offline")
    assert res.returncode == 2, res.stderr
    assert "--offline" in res.stderr
    assert not store.exists(), sorted(p.name for p in store.rglob("*"))


def test_store_that_is_a_file_is_bad_input(locked: Path, tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("x")
    for option in (["--store", str(path)], []):
        res = envbuild("build", locked, *option,
                       env={**os.environ, "ENVBUILD_STORE": str(path)})
        assert res.returncode == 2, res.stderr
        assert f"{path} is not a directory" in res.stderr
    assert path.read_text() == "x"


@pytest.mark.slow
def test_one_lock_two_stores_same_bytes(locked: Path, tmp_path: Path) -> None:
    one = build_json(locked, tmp_path / "one")
    two = build_json(locked, tmp_path / "two")
    env1, env2 = Path(one["path"]), Path(two["path"])
    assert env1 != env2
    m1, m2 = (env1 / MANIFEST).read_bytes(), (env2 / MANIFEST).read_bytes()
    assert m1 == m2
    assert one["manifest_digest"] == two["manifest_digest"]
    assert json.loads(m1)["tree_digest"] == json.loads(m2)["tree_digest"]
    assert (env1 / ".envbuild/files").read_bytes() == (env2 / ".envbuild/files").read_bytes()
    dists = {d["name"]: d for d in json.loads(m1)["distributions"]}
    assert dists["sdistonly"]["artifact"] == "sdistonly-1.0.tar.gz"
    # the wheel built from the sdist was built in each store, not shared
    assert list((tmp_path / "one" / "built").glob("*/*.whl"))
    assert list((tmp_path / "two" / "built").glob("*/*.whl"))


# ---- relocatable, read-only, bytecode -------------------------------------------------


@pytest.mark.parametrize("store_name", [
    "store",
    # installers write a `/bin/sh` preamble instead of `#!` when the interpreter's path is
    # over 127 bytes or holds a space: such a store must give the same relocatable env
    "a store with spaces/" + "deep" * 30,
], ids=["short-path", "long-path-with-spaces"])
@pytest.mark.slow
def test_env_is_relocatable(locked: Path, tmp_path: Path, store_name: str) -> None:
    store = tmp_path / store_name
    env = Path(build_json(locked, store)["path"])
    needles = {str(env).encode(), str(store).encode(), str(store.resolve()).encode()}
    for dirpath, dirnames, filenames in os.walk(env):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = os.readlink(path).encode()
                assert not any(n in target for n in needles), (path, target)
            elif path.is_file():
                data = path.read_bytes()
                assert not any(n in data for n in needles), path

    cfg = (env / "pyvenv.cfg").read_text().splitlines()
    assert not [line for line in cfg if line.replace(" ", "").startswith("command=")], cfg
    home = [line.split("=", 1)[1].strip() for line in cfg
            if line.split("=", 1)[0].strip() == "home"]
    assert len(home) == 1 and os.path.isabs(home[0]) and os.path.isdir(home[0])
    assert not Path(home[0]).resolve().is_relative_to(env.resolve())

    scripts = [p for p in (env / "bin").iterdir()
               if p.is_file() and not p.is_symlink() and os.access(p, os.X_OK)]
    assert {"alpha", "beta-tool", "sdistonly"} <= {p.name for p in scripts}
    for script in scripts:
        assert script.read_bytes().startswith(b"#!/bin/sh\n"), script

    moved = copy_env(env, tmp_path / "elsewhere" / "copy")
    store.rename(tmp_path / "store-gone")     # nothing may reach back into the original
    def run(argv: list[str | Path]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                              env=clean_env("PYTHONPATH"))

    out = run([moved / "bin" / "alpha"])
    assert (out.returncode, out.stdout) == (0, "alpha 2.0\n"), out.stderr
    out = run([moved / "bin" / "sdistonly"])
    assert (out.returncode, out.stdout) == (0, "sdistonly 1.0\n"), out.stderr
    out = run([moved / "bin" / "python", "-c",
               "import beta, gamma, pthmod, sys; print(sys.prefix)"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(moved)
    out = run(["bash", "-c", f'. "{moved}/bin/activate" && echo "$VIRTUAL_ENV"'])
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == moved.resolve()
    verify_full(moved)


@pytest.mark.slow
def test_env_is_read_only(locked: Path, tmp_path: Path) -> None:
    env = Path(build_json(locked, tmp_path / "store")["path"])
    checked = 0
    for dirpath, dirnames, filenames in os.walk(env):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            checked += 1
            mode = stat.S_IMODE(st.st_mode)
            assert not mode & (stat.S_IWGRP | stat.S_IWOTH), (path, oct(mode))
            assert not mode & 0o222, (path, oct(mode))
    assert checked > 50


@pytest.mark.slow
def test_bytecode_is_precompiled_and_nothing_is_written_at_run(locked: Path,
                                                               tmp_path: Path) -> None:
    env = Path(build_json(locked, tmp_path / "store")["path"])
    site = next(env.glob("lib/python*/site-packages"))
    tag = sys.implementation.cache_tag
    sources = [p for root in (site, env / "lib" / "envbuild-launch")
               for p in root.rglob("*.py")]
    assert any(p.parent.name == "alpha" for p in sources)
    for src in sources:
        pyc = src.parent / "__pycache__" / f"{src.stem}.{tag}.pyc"
        assert pyc.is_file(), f"no precompiled {pyc}"
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags & 0b01, f"{pyc}: not hash-based (flags {flags:#x})"

    before = snapshot(env)
    run_env = clean_env("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONPATH")
    out = subprocess.run([env / "bin" / "python", "-c",
                          "import sys, alpha, beta, gamma, delta, sdistonly, pthmod;"
                          "print(sys.flags.dont_write_bytecode)"],
                         capture_output=True, text=True, env=run_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"          # bytecode writing was really enabled
    out = subprocess.run([env / "bin" / "alpha"], capture_output=True, text=True,
                         env=run_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert snapshot(env) == before
    verify_full(env)


# ---- interpreters ---------------------------------------------------------------------


@pytest.mark.slow
def test_other_interpreter_builds_another_env(locked: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    default = build_json(locked, store)
    other = build_json(locked, store, "--python", OTHER_PYTHON)
    assert other["env_key"] != default["env_key"]
    assert other["path"] != default["path"]
    manifest = json.loads((Path(other["path"]) / MANIFEST).read_bytes())
    assert manifest["interpreter"]["path"] == OTHER_PYTHON
    out = subprocess.run([OTHER_PYTHON, "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, check=True)
    assert manifest["interpreter"]["version"] == out.stdout.strip()
    out = subprocess.run([Path(other["path"]) / "bin" / "python", "-c",
                          "import alpha, platform; print(platform.python_version())"],
                         capture_output=True, text=True, env=clean_env("PYTHONPATH"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == manifest["interpreter"]["version"]
    verify_full(other["path"])


def test_nonexistent_interpreter_is_bad_input(locked: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    res = envbuild("build", locked, "--store", store, "--python", "/nonexistent")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "/nonexistent" in res.stderr
    assert env_dirs(store) == []


# ---- concurrency ----------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_builders_build_once(locked: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-m", "envbuild", "build", str(locked),
                               "--store", str(store), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    results = []
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["path"] for r in results}) == 1
    assert len({r["manifest_digest"] for r in results}) == 1
    assert sorted(r["cached"] for r in results) == [False] + [True] * 5
    env = Path(results[0]["path"])
    assert env_dirs(store) == [env.name]
    assert os.listdir(store / "locks") == []
    verify_full(env)


# ---- kill -9 at many moments ----------------------------------------------------------


def _glob_any(base: Path, pattern: str) -> bool:
    try:
        return any(True for _ in base.glob(pattern))
    except OSError:   # a dir renamed or removed under the scan: look again next round
        return False


MILESTONES: dict[str, Callable[[Path], bool]] = {
    "started": lambda store: True,
    "store-locked": lambda store: _glob_any(store, "locks/*.lock"),
    "wheel-cached": lambda store: _glob_any(store, "wheels/*/*"),
    "sdist-built": lambda store: _glob_any(store, "built/*/*.whl"),
    "empty-venv": lambda store: _glob_any(store, "tmp/venv-*/bin"),
    "tmp-env": lambda store: _glob_any(store, "envs/.tmp-*"),
    "installed": lambda store: _glob_any(store, "envs/.tmp-*/lib/python*/site-packages/"
                                                "alpha-*.dist-info/RECORD"),
    "compiled": lambda store: _glob_any(store, "envs/.tmp-*/lib/python*/site-packages/"
                                               "alpha/__pycache__/*.pyc"),
    "sealing": lambda store: _glob_any(store, "envs/.tmp-*/.envbuild"),
}


def _assert_no_half_env(store: Path) -> None:
    for name in env_dirs(store):
        if not name.startswith(".tmp-"):
            assert (store / "envs" / name / MANIFEST).is_file(), \
                f"{name}: an env dir without a manifest"
    try:
        venvs = os.listdir(store / "venvs")
    except FileNotFoundError:
        venvs = []
    for name in venvs:   # empty venvs by key, each with its start probe: nothing half made
        assert re.fullmatch(r"[0-9a-f]{32}(\.startup-[0-9a-f]+\.json)?", name), \
            f"venvs/{name}: not an empty venv the store publishes"


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


@pytest.mark.parametrize("milestone,scope", [
    ("started", "process"), ("store-locked", "process"), ("wheel-cached", "process"),
    ("sdist-built", "group"), ("empty-venv", "process"), ("tmp-env", "process"),
    ("installed", "group"), ("compiled", "process"), ("sealing", "group"),
])
@pytest.mark.slow
def test_kill_9_leaves_no_half_env(locked: Path, tmp_path: Path, milestone: str,
                                   scope: str) -> None:
    store = tmp_path / "store"
    reached = MILESTONES[milestone]
    proc = subprocess.Popen([sys.executable, "-m", "envbuild", "build", str(locked),
                             "--store", str(store)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while proc.poll() is None:
            _assert_no_half_env(store)
            if reached(store):
                break
            time.sleep(0.002)
        # kill -9 the builder (or its whole process group: pip and compileall too)
        os.kill(proc.pid if scope == "process" else -proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, \
        f"the build ended (exit {proc.returncode}) before it was killed at {milestone}"
    # orphaned children of a killed builder run to their end; wait for them
    deadline = time.monotonic() + 300
    while _group_alive(proc.pid):
        _assert_no_half_env(store)
        assert time.monotonic() < deadline, "orphans of the killed build never ended"
        time.sleep(0.05)
    _assert_no_half_env(store)
    assert [d for d in env_dirs(store) if not d.startswith(".tmp-")] == []

    res = envbuild("build", locked, "--store", store, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["cached"] is False
    verify_full(info["path"])
    assert env_dirs(store) == [Path(info["path"]).name]
    _assert_no_half_env(store)
    # what the killed build left in the store's scratch dir goes at gc, once it is old
    gc(store, now=time.time() + 2 * 86400)
    assert os.listdir(store / "tmp") == []


# ---- ambient pip configuration --------------------------------------------------------


@pytest.mark.slow
def test_ambient_pip_configuration_changes_nothing(locked: Path, tmp_path: Path) -> None:
    plain = build_json(locked, tmp_path / "plain", env=clean_env(
        *[k for k in os.environ if k.startswith("PIP_")]))

    constraints = tmp_path / "constraints.txt"
    constraints.write_text("alpha==1.0\n")
    empty = tmp_path / "empty-links"
    empty.mkdir()
    home = tmp_path / "home"
    conf = "[global]\nindex-url = http://127.0.0.1:9/nothing\nno-binary = :all:\n" \
           f"constraint = {constraints}\n"
    for rel in (".config/pip/pip.conf", ".pip/pip.conf"):
        (home / rel).parent.mkdir(parents=True)
        (home / rel).write_text(conf)
    ambient = dict(os.environ, PIP_CONSTRAINT=str(constraints),
                   PIP_INDEX_URL="http://127.0.0.1:9/nothing", PIP_FIND_LINKS=str(empty),
                   PIP_NO_BINARY=":all:", HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    noisy = build_json(locked, tmp_path / "noisy", env=ambient)
    assert noisy["manifest_digest"] == plain["manifest_digest"]
    assert noisy["env_key"] == plain["env_key"]
    manifest = json.loads((Path(noisy["path"]) / MANIFEST).read_bytes())
    assert {d["name"]: d["version"] for d in manifest["distributions"]}["alpha"] == "2.0"



@pytest.mark.slow
def test_second_build_copies_each_wheels_pycs_from_the_store(tmp_path: Path,
                                                             index: LocalIndex) -> None:
    """With pip installing (--installer pip), a wheel's pycs are compiled once per store and
    copied by later builds."""
    recipe = write_recipe(tmp_path / "r", index)
    assert cli("lock", recipe).exit_code == 0
    pip = ("--installer", "pip")
    first = json.loads(cli("build", recipe, "--store", tmp_path / "s1", "--json", *pip).stdout)
    pycs = tmp_path / "s1" / "pycs"
    entries = sorted(p.name for p in pycs.iterdir())
    assert len(entries) == 7  # one per installed wheel, and the launch code's
    cached = next(pycs.glob("*/alpha/__pycache__/__init__.*.pyc"))
    assert not cached.stat().st_mode & 0o222
    # A second store sharing the wheel and pyc caches: same bytes, by copying.
    second_store = tmp_path / "s2"
    second_store.mkdir()
    for sub in ("wheels", "built", "pycs"):
        shutil.copytree(tmp_path / "s1" / sub, second_store / sub)
    marked = second_store / cached.relative_to(tmp_path / "s1")
    data = bytearray(marked.read_bytes())
    os.chmod(marked, 0o644)
    marked.write_bytes(bytes(data) + b"\0")  # a trailing byte only a copy would carry
    second = json.loads(cli("build", recipe, "--store", second_store, "--json", *pip).stdout)
    env_pyc = Path(second["path"]) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" \
        / "site-packages" / "alpha" / "__pycache__" / cached.name
    assert env_pyc.read_bytes() == bytes(data) + b"\0"
    assert second["manifest_digest"] != first["manifest_digest"]
    # without the mark, the copied pycs give the very same env as compiling them
    marked.write_bytes(bytes(data))
    third_store = tmp_path / "s3"
    third_store.mkdir()
    for sub in ("wheels", "built", "pycs"):
        shutil.copytree(second_store / sub, third_store / sub)
    third = json.loads(cli("build", recipe, "--store", third_store, "--json", *pip).stdout)
    assert third["manifest_digest"] == first["manifest_digest"]


@pytest.mark.slow
def test_launch_code_has_unchecked_pycs_site_packages_checked(locked: Path,
                                                              tmp_path: Path) -> None:
    """The guard's own modules run before the check has finished: their pycs are not
    validated against their sources at every start (their bytes are the files level's job);
    site-packages keeps checked-hash pycs."""
    env = Path(build_json(locked, tmp_path / "store")["path"])
    launch = list((env / "lib" / "envbuild-launch").rglob("*.pyc"))
    site = list(next(env.glob("lib/python*/site-packages")).rglob("*.pyc"))
    assert launch and site
    for pyc in launch:
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b01, pyc
    for pyc in site:
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11, pyc


def test_installs_leave_no_pycs_that_name_the_build_dir(tmp_path: Path) -> None:
    """pip runs under the env's own interpreter (`--python`), whose sys.path holds what the
    installs before it put in the env; pip's vendored requests imports `socks` when it can.
    One install puts a `socks` module in, the next pip imports it: no pyc may be written
    (it would hold the build dir's path)."""
    from pkgindex import write_wheel

    from envbuild.assemble import _install_share
    from envbuild.hashing import file_digest
    from envbuild.lock import LockEntry
    from envbuild.wheelcache import Artifact

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    arts = []
    for name, body in (("socks", "PROXY_TYPE_SOCKS5 = 2\nclass socksocket: pass\n"),
                       ("later", "X = 1\n")):
        path = wheels / write_wheel(str(wheels), name, "1.0",
                                    f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
                                    {f"{name}.py": body}, "")
        digest = file_digest(str(path))
        arts.append(Artifact(LockEntry(name, "1.0", None, (digest,)), path, digest, path,
                             digest))
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    for n, art in enumerate(arts):                 # one after the other, as shares may run
        _install_share(env, tmp_path / f"work{n}", [art])
    site = next(env.glob("lib/python3.*/site-packages"))
    assert (site / "socks.py").is_file() and (site / "later.py").is_file()
    assert not list(site.rglob("*.pyc")), list(site.rglob("*.pyc"))
