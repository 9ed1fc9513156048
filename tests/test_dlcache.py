"""dlcache: one download cache per user, shared by every store. Real pip against a local
index of this module's own (moved away to prove a build downloads nothing), real files,
real concurrent builds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, envbuild, write_recipe
from pkgindex import LocalIndex, build_index

from envbuild import layout
from envbuild.dlcache import DownloadCache, checked_files
from envbuild.errors import CacheIntegrityError

DEPS = ["alpha", "delta", "sdistonly"]   # two wheels and the sdist: every kind is shared


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def built_path(res: subprocess.CompletedProcess[str]) -> Path:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return Path(res.stdout.strip().splitlines()[-1])


def verify_full(env: Path) -> None:
    res = cli("verify", env, "--level", "full")
    assert res.exit_code == 0, res.stdout + res.stderr


def cached_files(cache: Path) -> dict[str, Path]:
    """{sha256 of the file: its path} of every artifact in the download cache."""
    return {f"sha256:{p.parent.name}": p for p in (cache / "sha256").glob("*/*")
            if p.name != ".origin.json"}


def recipe_at(tmp_path: Path, deps: list[str] = DEPS) -> tuple[Path, LocalIndex]:
    """A recipe locked against an index of its own, which the test may take away."""
    index = build_index(tmp_path / "index")
    recipe = write_recipe(tmp_path / "r", index, deps=deps)
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    return recipe, index


def corrupt(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


# ---- where it is, and what a lookup creates ---------------------------------------------


def test_the_cache_is_envbuild_cache_else_beside_the_user_cache(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("ENVBUILD_CACHE", str(tmp_path / "explicit"))
    assert layout.download_cache_root() == str(tmp_path / "explicit")
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("ENVBUILD_CACHE")
        else:
            monkeypatch.setenv("ENVBUILD_CACHE", unset)
        assert layout.download_cache_root() == str(tmp_path / "xdg" / "envbuild" / "downloads")
    cache = layout.DownloadLayout("/c")
    assert cache.artifact_dir("sha256:" + "ab" * 32) == "/c/sha256/" + "ab" * 32
    assert not (tmp_path / "xdg").exists()


def test_lookups_create_nothing_and_the_first_download_makes_it_0700(tmp_path: Path) -> None:
    cache = DownloadCache(str(tmp_path / "a" / "cache"))
    assert not cache.holds_artifacts()
    assert checked_files(cache.entry("sha256:" + "0" * 64), "sha256:" + "0" * 64, True) == []
    assert not (tmp_path / "a").exists()
    scratch = cache.scratch()
    assert scratch is not None and scratch.parent == tmp_path / "a" / "cache" / "tmp"
    assert stat.S_IMODE((tmp_path / "a" / "cache").stat().st_mode) == 0o700


def test_an_unwritable_cache_is_passed_over_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    cache = DownloadCache(str(tmp_path / "afile"))
    with caplog.at_level(logging.WARNING, "envbuild"):
        assert cache.scratch() is None and cache.scratch() is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and f"download cache {tmp_path / 'afile'} cannot be written" in said[0]
    assert (tmp_path / "afile").read_text() == "x"


def _staged(cache: DownloadCache, name: str, data: bytes) -> tuple[Path, str]:
    scratch = cache.scratch()
    assert scratch is not None
    (scratch / name).write_bytes(data)
    return scratch, "sha256:" + hashlib.sha256(data).hexdigest()


def test_publish_keeps_an_intact_entry_published_first_and_replaces_a_corrupt_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = DownloadCache(str(tmp_path / "cache"))
    first, digest = _staged(cache, "a-1.0-py3-none-any.whl", b"wheel bytes")
    assert cache.publish(first, "a-1.0-py3-none-any.whl", digest) == cache.entry(digest)
    kept = cache.entry(digest) / "a-1.0-py3-none-any.whl"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o444
    inode = kept.stat().st_ino

    second, _ = _staged(cache, "a-1.0-py3-none-any.whl", b"wheel bytes")
    assert cache.publish(second, "a-1.0-py3-none-any.whl", digest) == cache.entry(digest)
    assert not second.exists() and kept.stat().st_ino == inode    # the first one's, kept

    corrupt(kept)
    third, _ = _staged(cache, "a-1.0-py3-none-any.whl", b"wheel bytes")
    with caplog.at_level(logging.WARNING, "envbuild"):
        assert cache.publish(third, "a-1.0-py3-none-any.whl", digest) == cache.entry(digest)
    assert any(str(kept) in r.getMessage() for r in caplog.records)
    assert sha256(kept) == digest and not third.exists()
    corrupt(kept)
    with pytest.raises(CacheIntegrityError, match=str(kept)):
        checked_files(cache.entry(digest), digest, offline=True)
    assert kept.exists()    # refused, not discarded


# ---- builds ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_store_downloads_nothing(tmp_path: Path) -> None:
    """Store one downloads into the cache; store two, with the index gone, builds from it,
    by hard links; a third store builds from it with --offline, though it has no wheels/."""
    recipe, index = recipe_at(tmp_path)
    cache = Path(os.environ["ENVBUILD_CACHE"])
    one = built_path(envbuild("build", recipe, "--store", tmp_path / "one"))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    files = cached_files(cache)
    assert len(files) == 3 and all(sha256(p) == d for d, p in files.items())
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in files.values())
    assert os.listdir(cache / "tmp") == []

    shutil.move(index.root, tmp_path / "gone")     # no index: nothing can be downloaded
    res = envbuild("build", recipe, "--store", tmp_path / "two")
    two = built_path(res)
    assert "downloading" not in res.stderr, res.stderr
    assert f"linked 3 of 3 artifacts from the download cache {cache}" in res.stderr
    for digest, path in files.items():
        linked = next((tmp_path / "two" / "wheels" / digest[7:]).glob("*"))
        assert linked.name == path.name and linked.stat().st_ino == path.stat().st_ino
    assert (tmp_path / "two" / "wheels" / next(iter(files))[7:] / ".origin.json").is_file()

    three = built_path(envbuild("build", recipe, "--store", tmp_path / "three", "--offline"))
    for env in (one, two, three):
        verify_full(env)
    digests = {json.loads(cli("verify", e, "--json").stdout)["manifest_digest"]
               for e in (one, two, three)}
    assert len(digests) == 1


@pytest.mark.slow
def test_a_corrupt_cached_file_is_fetched_again_or_refused_offline(tmp_path: Path) -> None:
    recipe, _ = recipe_at(tmp_path, ["alpha"])
    cache = Path(os.environ["ENVBUILD_CACHE"])
    built_path(envbuild("build", recipe, "--store", tmp_path / "one"))
    (digest, alpha), = cached_files(cache).items()
    corrupt(alpha)                 # store one's file too: the same inode

    res = envbuild("build", recipe, "--store", tmp_path / "two")
    env = built_path(res)
    assert f"WARNING: {alpha}: bytes no longer match the lock's hash" in res.stderr, res.stderr
    assert "downloading 1 of 1 artifacts" in res.stderr
    assert sha256(alpha) == digest
    verify_full(env)

    corrupt(alpha)
    res = envbuild("build", recipe, "--store", tmp_path / "three", "--offline")
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{alpha}: expected sha256 {digest}" in res.stderr and "--offline" in res.stderr
    assert alpha.exists() and sha256(alpha) != digest     # refused, nothing fetched
    assert list((tmp_path / "three" / "envs").iterdir()) == []


@pytest.mark.slow
def test_without_envbuild_cache_it_is_under_xdg_cache_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, _ = recipe_at(tmp_path, ["alpha"])
    monkeypatch.delenv("ENVBUILD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    built_path(envbuild("build", recipe, "--store", tmp_path / "store"))
    cache = tmp_path / "xdg" / "envbuild" / "downloads"
    assert [p.name for p in cached_files(cache).values()] == ["alpha-2.0-py3-none-any.whl"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


@pytest.mark.slow
def test_an_unwritable_cache_does_not_fail_a_build(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, _ = recipe_at(tmp_path, ["alpha"])
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("ENVBUILD_CACHE", str(blocker / "cache"))
    res = envbuild("build", recipe, "--store", tmp_path / "store")
    verify_full(built_path(res))
    assert f"the download cache {blocker / 'cache'} cannot be written" in res.stderr
    wheels = [p.name for p in (tmp_path / "store" / "wheels").glob("*/*")]
    assert sorted(wheels) == [".origin.json", "alpha-2.0-py3-none-any.whl"]
    assert blocker.read_text() == "x"


@pytest.mark.slow
def test_two_builds_fill_one_cache_at_once(tmp_path: Path) -> None:
    recipe, _ = recipe_at(tmp_path, ["alpha", "delta"])
    cache = Path(os.environ["ENVBUILD_CACHE"])
    procs = [subprocess.Popen([sys.executable, "-m", "envbuild", "build", str(recipe),
                               "--store", str(tmp_path / name)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("one", "two")]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        verify_full(Path(out.strip().splitlines()[-1]))
    files = cached_files(cache)
    assert len(files) == 2 and all(sha256(p) == d for d, p in files.items())
    assert os.listdir(cache / "tmp") == []
