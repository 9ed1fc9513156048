"""`envbuild lock --python`: pip-compile run in the target interpreter (a tool venv of it
with pip-tools from PyPI, built once per store), so markers are evaluated for that Python.
Real interpreters (pyenv's CPython 3.9-3.13), real pip-tools, the local index."""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import envbuild, hostile_pip_env, write_recipe
from pkgindex import LocalIndex
from test_lock import header, pins

# gamma only below 3.10: whether the lock holds it says which Python it was resolved for
MARKED = ["alpha", "delta", "gamma; python_version < '3.10'"]


def lock_for(recipe: Path, python: str, store: Path, *args: str) -> None:
    res = envbuild("lock", recipe, "--python", python, "--store", store, *args,
                   env=hostile_pip_env(recipe.parent / "ambient"))
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.network
@pytest.mark.parametrize("target", ["3.9", "3.12", "3.13"])
def test_lock_resolves_for_the_target_python(tmp_path: Path, index: LocalIndex,
                                             tools_store: Path, target: str) -> None:
    recipe = write_recipe(tmp_path / "r", index, deps=MARKED, name="marked")
    # with this machine's pip configuration and worse in place: none of it may matter
    lock_for(recipe, target, tools_store)
    text = recipe.with_suffix(".lock").read_text()
    assert header(text)["python"] == f"{target} (cpython)"
    assert header(text)["resolver"] == f"pip-tools {version('pip-tools')}"
    expected = {"alpha": "2.0", "delta": "1.0"}
    if target == "3.9":
        expected["gamma"] = "1.1"
        assert 'gamma==1.1 ; python_version < "3.10"' in text
    assert pins(text) == expected

    res = envbuild("lock", recipe, "--check", "--python", target)
    assert res.returncode == 0, res.stderr
    assert "up to date" in res.stdout
    other = "3.13" if target != "3.13" else "3.12"
    res = envbuild("lock", recipe, "--check", "--python", other)
    assert res.returncode == 1, res.stderr
    assert f"locked for Python {target}, expected {other}" in res.stderr
    assert f"--python {other}" in res.stderr

    # the tool venv is built once, in the store's tools/, and reused
    (tool,) = [p for p in (tools_store / "tools").iterdir()
               if p.name.startswith(f"pip-tools-{version('pip-tools')}-cp"
                                    f"{target.replace('.', '')}-")]
    before = tool.stat().st_ino
    os.unlink(recipe.with_suffix(".lock"))
    lock_for(recipe, target, tools_store)
    assert recipe.with_suffix(".lock").read_text() == text
    assert tool.stat().st_ino == before
    assert not [p for p in (tools_store / "tools").iterdir() if p.name.startswith(".tmp-")]


def test_the_running_python_needs_no_tool_venv(tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path / "r", index, deps=MARKED, name="marked")
    store = tmp_path / "store"
    res = envbuild("lock", recipe, "--python", sys.executable, "--store", store)
    assert res.returncode == 0, res.stderr
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert header(recipe.with_suffix(".lock").read_text())["python"] == f"{here} (cpython)"
    assert not (store / "tools").exists()


def test_tools_index_url_is_where_pip_tools_comes_from(tmp_path: Path,
                                                       index: LocalIndex) -> None:
    """The local index has no pip-tools: the install fails (exit 1, naming what it wanted),
    and no tool venv, whole or half, is left in the store."""
    recipe = write_recipe(tmp_path / "r", index, deps=MARKED, name="marked")
    store = tmp_path / "store"
    env = dict(os.environ, ENVBUILD_TOOLS_INDEX_URL=index.simple_url)
    res = envbuild("lock", recipe, "--python", "3.12", "--store", store, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"pip-tools=={version('pip-tools')}" in res.stderr
    assert index.simple_url in res.stderr
    assert "Traceback" not in res.stderr
    assert list((store / "tools").iterdir()) == []
    assert not recipe.with_suffix(".lock").exists()


@pytest.mark.parametrize("python,says", [
    ("3.99", "--python 3.99: expected Python 3.99 as python3.99 on PATH or "),
    ("/bin/ls", "--python: expected a Python interpreter, found /bin/ls: it exited with "
                "status 2 when run as Python"),
    ("no-such-python", "--python: expected a path, a version such as 3.12 or a command on "
                       "PATH, found 'no-such-python': not on PATH"),
])
@pytest.mark.parametrize("command", ["lock", "build"])
def test_a_python_that_is_not_there_is_one_line_and_exit_2(tmp_path: Path, index: LocalIndex,
                                                           python: str, says: str,
                                                           command: str) -> None:
    recipe = write_recipe(tmp_path / "r", index, deps=["alpha"], name="one")
    if command == "build":
        lock_for(recipe, sys.executable, tmp_path / "store")
    res = envbuild(command, recipe, "--python", python, "--store", tmp_path / "store")
    assert res.returncode == 2, res.stdout + res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith("envbuild: error: ") and says in line, line
    assert not (tmp_path / "store" / "tools").exists()
    assert not list((tmp_path / "store").glob("envs/*"))


def test_target_outside_requires_python_is_refused_before_installing(
        tmp_path: Path, index: LocalIndex) -> None:
    recipe = write_recipe(tmp_path / "r", index, deps=["alpha"], name="one")
    recipe.write_text(recipe.read_text().replace(">=3.9", ">=3.10"))
    res = envbuild("lock", recipe, "--python", "3.9", "--store", tmp_path / "store")
    assert res.returncode == 2, res.stderr
    assert "requires-python: expected an interpreter matching '>=3.10', found" in res.stderr
    assert not (tmp_path / "store" / "tools").exists()


def test_dist_version_reads_what_importlib_metadata_reads() -> None:
    """Every distribution installed beside envbuild, by each of its top-level modules: the
    same version `importlib.metadata` gives (found by the METADATA beside the module)."""
    from importlib.metadata import packages_distributions

    from envbuild.proc import dist_version

    checked = 0
    for module, dists in packages_distributions().items():
        for dist in dists:
            assert dist_version(dist, module) == version(dist), (dist, module)
            checked += 1
    assert checked > 20
    assert dist_version("surely-not-installed-here") is None


def test_dist_version_of_the_tools_without_importlib_metadata() -> None:
    """The versions a cache hit and a lock name, read without importing
    `importlib.metadata` (the reason `dist_version` exists)."""
    import subprocess

    code = ("import sys\nfrom envbuild.proc import dist_version\n"
            "found = [dist_version('installer'), dist_version('pip-tools', 'piptools'),"
            " dist_version('uv')]\n"
            "assert None not in found, found\n"
            "assert 'importlib.metadata' not in sys.modules, 'imported'\n")
    subprocess.run([sys.executable, "-I", "-c", code], check=True)
