"""`envbuild build` never hands out a damaged env: a cache hit is verified (files level, or
full on request), a damaged env is moved aside and built again; --force builds again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, make_writable, write_recipe
from pkgindex import LocalIndex


def _build(recipe: Path, store: Path, *args: str) -> tuple[dict[str, Any], str]:
    res = cli("build", recipe, "--store", store, "--json", *args)
    assert res.exit_code == 0, res.stderr
    info: dict[str, Any] = json.loads(res.stdout)
    return info, res.stderr


@pytest.fixture
def first(tmp_path: Path, index: LocalIndex) -> tuple[Path, Path, dict[str, Any]]:
    recipe = write_recipe(tmp_path, index, deps=["gamma"])
    assert cli("lock", recipe).exit_code == 0
    info, _ = _build(recipe, tmp_path / "store")
    assert not info["cached"]
    return recipe, tmp_path / "store", info


def _module(env: Path) -> Path:
    return next(env.glob("lib/python*/site-packages/gamma.py"))


def _verify(env: Path, level: str) -> int:
    return cli("verify", env, "--level", level).exit_code


def test_an_intact_env_is_reused(first: tuple[Path, Path, dict[str, Any]]) -> None:
    recipe, store, info = first
    again, _ = _build(recipe, store)
    assert again["cached"] and again["path"] == info["path"] and again["moved_aside"] is None


def test_a_damaged_env_is_moved_aside_and_built_again(
        first: tuple[Path, Path, dict[str, Any]]) -> None:
    recipe, store, info = first
    env = Path(info["path"])
    make_writable(env)
    _module(env).write_text("raise SystemExit('tampered')\n")   # another size
    again, stderr = _build(recipe, store)
    assert not again["cached"] and again["path"] == info["path"]
    assert again["manifest_digest"] == info["manifest_digest"]
    aside = Path(again["moved_aside"])
    assert aside.parent == env.parent and aside.name.startswith(".damaged-")
    assert "tampered" in _module(aside).read_text()         # kept for a look, not lost
    assert "differs from its manifest" in stderr and str(aside) in stderr
    assert _verify(env, "full") == 0
    assert "tampered" not in _module(env).read_text()


def test_same_size_damage_needs_the_full_level(
        first: tuple[Path, Path, dict[str, Any]]) -> None:
    """The files level compares sizes and modes; `--verify full` reads every byte."""
    recipe, store, info = first
    env = Path(info["path"])
    make_writable(env)
    module = _module(env)
    data = module.read_bytes()
    module.write_bytes(data[:-1] + (b"#" if data[-1:] != b"#" else b" "))
    os.chmod(module, 0o444)
    for path in (env, *[Path(d) for d, _, _ in os.walk(env)]):
        os.chmod(path, 0o555)
    reused, _ = _build(recipe, store)
    assert reused["cached"]
    again, _ = _build(recipe, store, "--verify", "full")
    assert not again["cached"] and again["moved_aside"]
    assert _verify(env, "full") == 0


def test_force_builds_again(first: tuple[Path, Path, dict[str, Any]]) -> None:
    recipe, store, info = first
    before = (Path(info["path"]) / "envbuild-manifest.json").stat().st_ino
    again, _ = _build(recipe, store, "--force")
    assert not again["cached"] and again["moved_aside"] is None
    assert again["manifest_digest"] == info["manifest_digest"]
    assert (Path(again["path"]) / "envbuild-manifest.json").stat().st_ino != before
    assert [p.name for p in (store / "envs").iterdir()] == [Path(info["path"]).name]


def test_verify_level_must_be_files_or_full(first: tuple[Path, Path, dict[str, Any]]) -> None:
    recipe, store, _ = first
    res = cli("build", recipe, "--store", store, "--verify", "quick")
    assert res.exit_code == 2
    assert "--verify: expected files or full, found 'quick'" in res.stderr
