"""The missing trees installed by forked children while the build puts the other trees'
files in place: the same trees and env as an install in the build's own process (where
forking is not safe); a later wheel's file replaces an earlier one's whichever of the two
trees is new; a child's failure reported as the build's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, ignore_sigchld, write_recipe
from pkgindex import LocalIndex
from test_trees import make_wheel

# envbuild's CLI, as `python -m envbuild` runs it
RUN = """
import runpy, sys
sys.argv = ["envbuild", *sys.argv[1:]]
runpy.run_module("envbuild", run_name="__main__")
"""
# ... in a process that counts its forks, and its children theirs (a file per fork, named
# by the forking process's pid and the child's, in the dir its first argument names)
COUNTED = """
import os, sys
forks, real_fork = sys.argv.pop(1), os.fork
def fork():
    pid = real_fork()
    if pid:
        open(os.path.join(forks, f"{os.getpid()}-{pid}"), "w").close()
    return pid
os.fork = fork
""" + RUN
# what starts another thread first: forking is then not safe, and the build installs
# every tree in its own process
THREADED = """
import threading
threading.Thread(target=threading.Event().wait, daemon=True).start()
"""


# how a build is started: as usual; in a process where another thread runs; by a parent
# that ignores SIGCHLD (which exec passes on: the CLI restores the default, so that the
# tools and children it waits for are not reaped unseen)
WAYS = ("usual", "threaded", "sigchld-ignored")


def start(argv: list[str], way: str) -> subprocess.CompletedProcess[str]:
    """`python -c SCRIPT ARGV...` started `way` (see WAYS), with the SCRIPT `THREADED` begins
    for a threaded way; `argv[0]` is the script."""
    script = (THREADED if way == "threaded" else "") + argv[0]
    return subprocess.run(
        [sys.executable, "-c", script, *argv[1:]], capture_output=True, text=True,
        preexec_fn=ignore_sigchld if way == "sigchld-ignored" else None)


def build(recipe: Path, store: Path, forks: Path, way: str = "usual"
          ) -> tuple[dict[str, Any], int]:
    """The build's JSON and how many processes it forked itself, started `way`."""
    forks.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in forks.iterdir()}
    res = start([COUNTED, str(forks), "build", str(recipe), "--store", str(store), "--json"],
                way)
    assert res.returncode == 0, res.stderr
    made = [name.split("-") for name in {p.name for p in forks.iterdir()} - before]
    children = {child for _parent, child in made}
    own = [child for parent, child in made if parent not in children]
    assert len(made) == len(own)   # a child forks nothing (its compiler it spawns)
    return json.loads(res.stdout.splitlines()[-1]), len(own)


def env_files(env: Path) -> dict[str, bytes]:
    return {str(p.relative_to(env)): p.read_bytes() for p in sorted(env.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def tree_records(store: Path) -> dict[str, bytes]:
    return {tree.name: (tree / "files").read_bytes() + (tree / "tree.json").read_bytes()
            for tree in sorted((store / "trees").iterdir())}


@pytest.mark.slow
def test_children_install_the_trees_this_process_would(tmp_path: Path,
                                                        index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path, index, deps=["alpha", "beta", "gamma", "pthpkg"])
    assert cli("lock", recipe).exit_code == 0
    forked, forks = build(recipe, tmp_path / "forked", tmp_path / "forks")
    assert forks >= 1   # (one child per core, four at most: no more than the wheels)
    here, forks = build(recipe, tmp_path / "here", tmp_path / "forks", "threaded")
    assert forks == 0
    ignored, forks = build(recipe, tmp_path / "ignored", tmp_path / "forks", "sigchld-ignored")
    assert forks >= 1   # the CLI restored SIGCHLD's default: children, waited for as usual
    for other, store in ((here, "here"), (ignored, "ignored")):
        assert forked["manifest_digest"] == other["manifest_digest"]
        assert tree_records(tmp_path / "forked") == tree_records(tmp_path / store)
        assert env_files(Path(forked["path"])).keys() == env_files(Path(other["path"])).keys()
    again, forks = build(recipe, tmp_path / "forked", tmp_path / "forks")
    assert (again["cached"], forks) == (True, 0)


def shared_wheel(dest: Path, name: str) -> Path:
    """A wheel of `name` that also ships `shared.py`, with its own content."""
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode()
    return make_wheel(dest, name, "1.0", {
        f"{name}.py": (b"X = 1\n", 0o644),
        "shared.py": (f"FROM = {name!r}\n".encode(), 0o644),
        f"{name}-1.0.dist-info/METADATA": (meta, 0o644),
        f"{name}-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\n"
                                        b"Root-Is-Purelib: true\nTag: py3-none-any\n", 0o644)})


def local_recipe(tmp_path: Path, index: LocalIndex, wheels: Path, deps: list[str],
                 name: str) -> Path:
    """A locked recipe of `deps`, the wheels in `wheels` found beside the index."""
    # (`extra` lands in the recipe's last table, [index])
    recipe = write_recipe(tmp_path, index, deps=deps, name=name,
                          extra=f'find-links = ["{wheels}"]\n')
    assert cli("lock", recipe).exit_code == 0
    return recipe


@pytest.mark.slow
def test_a_later_wheels_file_wins_whichever_tree_is_new(tmp_path: Path,
                                                        index: LocalIndex) -> None:
    """`aaa` and `zzz` both ship shared.py: the env has zzz's (the later install), built
    with neither tree in the store, with only aaa's (zzz's installed meanwhile), with only
    zzz's, and with both."""
    wheels = tmp_path / "wheels"
    for name in ("aaa", "zzz"):
        shared_wheel(wheels, name)
    recipes = {}
    for deps in (["aaa"], ["zzz"], ["aaa", "zzz"]):
        name = "-".join(deps)
        recipes[name] = local_recipe(tmp_path / name, index, wheels, deps, name)
    both = recipes["aaa-zzz"]
    forks = tmp_path / "forks"
    builds = []
    for first in ((), ("aaa",), ("zzz",), ("aaa", "zzz")):
        store = tmp_path / ("store-" + "-".join(first))
        for name in first:
            build(recipes[name], store, forks)
        got, forked = build(both, store, forks)
        # a child per core for what the store lacks, four at most
        assert forked == min(os.cpu_count() or 1, 4, 2 - len(first)), first
        builds.append(got)
    for got in builds:
        site = next(Path(got["path"]).glob("lib/python*/site-packages"))
        assert (site / "shared.py").read_text() == "FROM = 'zzz'\n", got
        assert got["manifest_digest"] == builds[0]["manifest_digest"]


def failed_builds(recipe: Path, tmp_path: Path) -> list[tuple[Path, str]]:
    """`envbuild build` of `recipe` started each of the `WAYS` (with the trees installed by
    forked children, by the build's own process, by children again), each into a store of
    its own: the store and what the build said, once each build failed with exit 1 leaving
    nothing in the store's temp dir or envs."""
    out = []
    for way in WAYS:
        store = tmp_path / f"store-{way}"
        res = start([RUN, "build", str(recipe), "--store", str(store)], way)
        assert res.returncode == 1, res.stderr
        assert list((store / "tmp").iterdir()) == []
        assert list((store / "envs").iterdir()) == []
        out.append((store, res.stderr))
    return out


def test_a_module_that_does_not_compile_fails_the_build_naming_it(
        tmp_path: Path, index: LocalIndex) -> None:
    """A wheel's module with a syntax error fails the build, naming the file, whether a
    child installs the wheel (its ToolError reported as the build's) or the build's own
    process does. Exit 1 every way; nothing left in the store's temp dir, trees or envs."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "badsyntax", "1.0", {
        "badsyntax/__init__.py": (b"X = 1\n", 0o644),
        "badsyntax/oops.py": (b"def broken(:\n    pass\n", 0o644),
        "badsyntax-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: badsyntax\n"
                                             b"Version: 1.0\n", 0o644),
        "badsyntax-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\n"
                                          b"Root-Is-Purelib: true\nTag: py3-none-any\n",
                                          0o644)})
    recipe = local_recipe(tmp_path, index, wheels, ["badsyntax"], "badsyntax")
    for store, said in failed_builds(recipe, tmp_path):
        assert "badsyntax/oops.py" in said and "SyntaxError" in said, said
        assert list((store / "trees").iterdir()) == []


def test_a_childs_failure_is_the_builds(tmp_path: Path, index: LocalIndex) -> None:
    """A wheel the installer cannot read, installed by a child or in the build's own
    process: the same message and exit status, nothing left in the store's temp dir."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "broken", "1.0", {   # a .data dir named otherwise than the wheel
        "broken.py": (b"X = 1\n", 0o644),
        "Broken-1.0.data/data/share/broken.txt": (b"data\n", 0o644),
        "broken-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: broken\n"
                                          b"Version: 1.0\n", 0o644),
        "broken-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\n"
                                       b"Root-Is-Purelib: true\nTag: py3-none-any\n", 0o644)})
    recipe = local_recipe(tmp_path, index, wheels, ["beta", "broken"], "broken")
    errors = []
    for _store, said in failed_builds(recipe, tmp_path):
        assert "broken-1.0-py3-none-any.whl: expected a wheel the installer can read" in said
        errors.append([line for line in said.splitlines() if "expected a wheel" in line])
    for way, lines in zip(WAYS[1:], errors[1:]):
        assert errors[0] == [e.replace(f"store-{way}", "store-usual") for e in lines]
