"""The recipes users start from: each parses, each has a fresh lock committed beside it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import ROOT, cli, envbuild
from packaging.specifiers import SpecifierSet

from envbuild.recipe import load_recipe

RECIPES = ROOT / "recipes"
ALL = sorted(RECIPES.glob("*.toml"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_the_starting_recipes_exist() -> None:
    names = {p.name for p in ALL}
    assert {"scientific.toml", "webclient.toml", "cli-tool.toml"} <= names
    for path in ALL:
        assert path.with_suffix(".lock").is_file(), f"{path.name}: no lock committed beside it"


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_recipe_parses_and_lock_is_fresh(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name
    before = snapshot(RECIPES)
    res = cli("lock", "--check", path)
    assert res.exit_code == 0, res.stderr
    assert snapshot(RECIPES) == before


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_committed_lock_is_portable(path: Path) -> None:
    """Made against the public index, with nothing from the machine that made it."""
    text = path.with_suffix(".lock").read_text()
    head = dict(line[2:].split(": ", 1) for line in text.splitlines()[1:6])
    assert head["index-url"] == "https://pypi.org/simple"
    assert head["find-links"] == "-"
    assert head["resolver"].startswith("pip-tools ")
    python = head["python"].split()[0]
    assert SpecifierSet(load_recipe(path).requires_python).contains(python + ".0",
                                                             prereleases=True)
    for leaked in ("/opt/", "file://", "/tmp/", "/home/", "/root/", "@"):
        assert leaked not in text, leaked
    body = [ln for ln in text.splitlines() if ln and not ln.lstrip().startswith("#")]
    requirements = [ln for ln in body if not ln.startswith(" ")]
    assert requirements
    for line in requirements:
        assert re.match(r"^[a-z0-9][a-z0-9._-]*==\S+", line), line
        assert line.endswith("\\"), f"{line}: no --hash follows"


def test_scientific_recipe() -> None:
    r = load_recipe(RECIPES / "scientific.toml")
    assert r.name == "scientific"
    assert SpecifierSet(r.requires_python) == SpecifierSet(">=3.11,<3.12")
    assert {d.split(">")[0].split("=")[0] for d in r.dependencies} >= {"numpy", "scipy"}
    lock = (RECIPES / "scientific.lock").read_text()
    assert re.search(r"^numpy==", lock, re.M) and re.search(r"^scipy==", lock, re.M)


def test_webclient_recipe() -> None:
    r = load_recipe(RECIPES / "webclient.toml")
    assert r.name == "webclient"
    assert "requests[socks]>=2.31" in r.dependencies
    assert any("python_version" in d for d in r.dependencies)  # a marker
    assert r.environment.set == {"PYTHONIOENCODING": "utf-8"}
    assert tuple(r.environment.require) == ()
    lock = (RECIPES / "webclient.lock").read_text()
    for name in ("requests", "pysocks", "httpx"):
        assert re.search(rf"^{name}==", lock, re.M), name
    # tomli applies below 3.11 only; the lock is made for 3.11
    assert not re.search(r"^tomli==", lock, re.M)


def test_cli_tool_recipe() -> None:
    r = load_recipe(RECIPES / "cli-tool.toml")
    assert r.name == "cli-tool"
    assert r.launch_root == "warn"
    lock = (RECIPES / "cli-tool.lock").read_text()
    assert re.search(r"^black==", lock, re.M)


@pytest.mark.slow
@pytest.mark.network
def test_webclient_builds_and_runs(tmp_path: Path) -> None:
    before = snapshot(RECIPES)
    store = tmp_path / "store"
    res = envbuild("build", RECIPES / "webclient.toml", "--store", store)
    assert res.returncode == 0, res.stderr
    env = Path(res.stdout.strip().splitlines()[-1])
    assert store in env.parents
    smoke = ("import os, sys, requests, httpx, socks; "
             "print(requests.__version__, httpx.__version__, os.environ['PYTHONIOENCODING'], "
             "sys.prefix)")
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    res = envbuild("run", env, "--", "python", "-c", smoke, env=run_env)
    assert res.returncode == 0, res.stderr
    requests_version, httpx_version, encoding, prefix = res.stdout.split()
    lock = (RECIPES / "webclient.lock").read_text()
    assert f"requests=={requests_version} " in lock
    assert f"httpx=={httpx_version} " in lock
    assert encoding == "utf-8"  # the recipe's [environment] default
    assert Path(prefix).resolve() == env.resolve()
    assert snapshot(RECIPES) == before  # building writes nothing beside the recipe
