"""`envbuild list`, `show` and `gc` as a user types them, over a real store with two envs
built from two recipes; gc over copies of it (its removals are real: 0555 dirs, a non-root
owner, a hardlink from outside, a live build lock, a real `envbuild run`)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, Built, cli, envbuild, write_recipe
from pkgindex import LocalIndex

from envbuild.layout import FILES, MANIFEST
from envbuild.store import exclusive

OLD = time.time() - 40 * 86400          # beyond gc's default window of 30 days
ENTRIES = ("wheels", "built", "pycs", "locks", "runs", "tmp", "used")


@dataclass(frozen=True)
class TwoEnvs:
    store: Path
    demo: Path          # the session's demo env (a copy of it, in this store)
    other: Path         # built here from another recipe
    demo_recipe: Path
    other_recipe: Path


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, built: Built, index: LocalIndex) -> TwoEnvs:
    """A store with the session's demo env (copied with its wheel cache, never the session
    store itself) and an env of a second recipe built into it. Never modify it: copy it."""
    work = tmp_path_factory.mktemp("two")
    store = work / "store"
    store.mkdir()
    for entry in ENTRIES:
        if (built.store / entry).is_dir():
            shutil.copytree(built.store / entry, store / entry, symlinks=True)
    (store / "envs").mkdir()
    demo = Path(shutil.copytree(built.env, store / "envs" / built.env.name, symlinks=True))
    shutil.copy2(built.store / "used" / built.env.name, store / "used" / built.env.name)
    recipe = write_recipe(work, index, deps=["alpha", "delta"], name="other")
    assert cli("lock", recipe).exit_code == 0
    res = cli("build", recipe, "--store", store, "--offline")
    assert res.exit_code == 0, res.stderr
    return TwoEnvs(store, demo, Path(res.stdout.strip().splitlines()[-1]), built.recipe,
                   recipe)


def copy_store(two: TwoEnvs, dest: Path) -> TwoEnvs:
    """A copy of the store (modes and mtimes kept) to change."""
    shutil.copytree(two.store, dest, symlinks=True)
    return TwoEnvs(dest, dest / "envs" / two.demo.name, dest / "envs" / two.other.name,
                   two.demo_recipe, two.other_recipe)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path under root: mode, size, mtime, inode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                st.st_ino)
    return out


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def age(store: Path, *envs: Path, when: float = OLD) -> None:
    for env in envs:
        os.utime(store / "used" / env.name, (when, when))


def rows(store: Path) -> dict[str, dict[str, object]]:
    res = cli("list", "--store", store, "--json")
    assert res.exit_code == 0, res.stderr
    return {str(r["path"]): r for r in json.loads(res.stdout)}


# ---- list and show -------------------------------------------------------------------------


def test_list_json_and_table(two: TwoEnvs) -> None:
    found = rows(two.store)
    assert set(found) == {str(two.demo), str(two.other)}
    for env, recipe, name in ((two.demo, two.demo_recipe, "demo"),
                              (two.other, two.other_recipe, "other")):
        row = found[str(env)]
        assert sorted(row) == sorted(["name", "key", "path", "recipe", "size_bytes",
                                      "built_utc", "last_used_utc", "damaged"])
        provenance = json.loads((env / ".envbuild" / "provenance.json").read_text())
        assert (row["name"], row["key"]) == (name, env.name.rpartition("-")[2])
        assert row["recipe"] == str(recipe.absolute())
        assert row["built_utc"] == provenance["built_utc"]
        assert row["size_bytes"] == du(env)
        mark = (two.store / "used" / env.name).stat().st_mtime
        assert row["last_used_utc"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mark))
        assert row["damaged"] is False
    res = envbuild("list", "--store", two.store)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "KEY", "SIZE"]
    assert lines[1].startswith("demo ") and lines[2].startswith("other ")
    key_at = lines[0].index("KEY")
    assert [line[key_at:key_at + 16] for line in lines[1:3]] == [
        two.demo.name[-16:], two.other.name[-16:]]
    assert all(" MiB " in line or " KiB " in line for line in lines[1:3])
    assert lines[-1].startswith("2 envs, ")


def test_show_by_path_and_by_name(two: TwoEnvs) -> None:
    manifest = json.loads((two.other / MANIFEST).read_bytes())
    by_path = envbuild("show", two.other)
    assert by_path.returncode == 0, by_path.stderr
    text = by_path.stdout
    digest = subprocess.run(["sha256sum", str(two.other / MANIFEST)], capture_output=True,
                            text=True, check=True).stdout.split()[0]
    assert f"manifest digest: sha256:{digest}\n" in text
    assert "name: other\n" in text and f"key: {manifest['env_key']}\n" in text
    interp = manifest["interpreter"]
    assert f"{interp['version']} at {interp['path']}" in text
    assert f"abi {interp['abi']}, platform {interp['platform']}, libc {interp['libc']}" in text
    assert f"distributions: {len(manifest['distributions'])}\n" in text
    for dist in manifest["distributions"]:
        assert f"  {dist['name']} {dist['version']}  {dist['artifact']}\n" in text
    files = len((two.other / FILES).read_text().splitlines()) - 1
    assert f"files: {files}\n" in text and f"tree digest: {manifest['tree_digest']}\n" in text
    assert "launch: hook off, root warn" in text
    by_name = envbuild("show", "other", "--store", two.store)
    assert by_name.returncode == 0 and by_name.stdout == text
    demo = envbuild("show", "demo", "--store", two.store)
    assert "  set OMP_NUM_THREADS=1 (when unset)\n" in demo.stdout
    raw = envbuild("show", two.demo, "--json")
    assert raw.stdout.rstrip("\n").encode() == (two.demo / MANIFEST).read_bytes()


def test_show_by_name_picks_the_newest(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    newer = copy.store / "envs" / ("other-" + "0" * 16)
    shutil.copytree(copy.other, newer, symlinks=True)
    prov = newer / ".envbuild" / "provenance.json"
    data = json.loads(prov.read_text())
    data["built_utc"] = "2999-01-01T00:00:00Z"
    os.chmod(newer / ".envbuild", 0o755)
    prov.unlink()
    prov.write_text(json.dumps(data))
    res = envbuild("show", "other", "--store", copy.store)
    assert f"path: {newer}\n" in res.stdout, res.stdout + res.stderr


def test_damaged_and_aside_envs_are_listed_as_damaged(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    os.chmod(copy.other, 0o755)
    cfg = copy.other / "pyvenv.cfg"
    os.chmod(cfg, 0o644)
    cfg.write_text(cfg.read_text() + "include-system-site-packages = true\n")
    os.chmod(cfg, 0o444)
    os.chmod(copy.other, 0o555)
    aside = copy.store / "envs" / f".damaged-{copy.demo.name}-20200101T000000Z"
    shutil.copytree(copy.demo, aside, symlinks=True)
    found = rows(copy.store)
    assert found[str(copy.other)]["damaged"] is True
    assert found[str(copy.demo)]["damaged"] is False
    assert found[str(aside)]["damaged"] is True and found[str(aside)]["name"] == "demo"
    table = envbuild("list", "--store", copy.store).stdout
    assert "aside (damaged)" in table and "2 damaged" in table.splitlines()[-1]


# ---- gc ------------------------------------------------------------------------------------


def kept_pycs(store: Path) -> set[str]:
    """The dirs of pycs kept by source: a copied store's have one link each (the copy
    broke the links with the trees), so gc lists them too."""
    return {str(p) for p in (store / "pycs").glob("by-source-*")}


def test_gc_dry_run_changes_nothing(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    age(copy.store, copy.demo, copy.other)
    stale = copy.store / "envs" / f".tmp-{copy.other.name}-abcd1234"
    stale.mkdir()
    os.utime(stale, (OLD, OLD))
    before = snapshot(copy.store)
    res = envbuild("gc", "--store", copy.store, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert snapshot(copy.store) == before
    lines = res.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(
        line for line in lines[:-1] if line.startswith("would remove "))
    named = {line.split()[2] for line in lines[:-1]} - kept_pycs(copy.store)
    assert named == {str(copy.demo), str(copy.other), str(stale)}
    as_json = json.loads(envbuild("gc", "--store", copy.store, "--dry-run", "--json").stdout)
    pycs = sum(r["size_bytes"] for r in as_json["removed"]
               if r["path"] in kept_pycs(copy.store))
    assert as_json["freed_bytes"] - pycs == du(copy.demo) + du(copy.other) + du(stale)
    assert snapshot(copy.store) == before


def test_gc_keeps_what_a_run_used_and_removes_the_rest(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    age(copy.store, copy.demo, copy.other)
    run = envbuild("run", copy.demo, "--", "true", env={**os.environ, "ENVBUILD_RUNLOG":
                                                        str(tmp_path / "runs.jsonl")})
    assert run.returncode == 0, run.stderr
    assert (copy.store / "used" / copy.demo.name).stat().st_mtime > OLD + 86400
    aside = copy.store / "envs" / f".replaced-{copy.other.name}-20200101T000000Z"
    shutil.copytree(copy.other, aside, symlinks=True)
    fresh_tmp = copy.store / "envs" / f".tmp-{copy.other.name}-fresh123"
    fresh_tmp.mkdir()
    # an empty venv an earlier build was killed while making (in venvs/, where builds
    # made them before they made them in tmp/), and one a build makes now
    (copy.store / "venvs").mkdir(exist_ok=True)
    old_venv, new_venv = (copy.store / "venvs" / ".tmp-old", copy.store / "venvs" / ".tmp-new")
    for made in (old_venv / "bin", new_venv / "bin"):
        made.mkdir(parents=True)
    os.utime(old_venv, (OLD, OLD))
    res = envbuild("gc", "--store", copy.store)
    assert res.returncode == 0, res.stderr
    removed = {line.split()[1] for line in res.stdout.splitlines()[:-1]}
    assert removed - kept_pycs(copy.store) == {str(copy.other), str(aside), str(old_venv)}
    assert new_venv.is_dir()
    assert res.stdout.splitlines()[-1].startswith("freed ")
    assert sorted(os.listdir(copy.store / "envs")) == sorted([copy.demo.name, fresh_tmp.name])
    assert os.listdir(copy.store / "used") == [copy.demo.name]
    verify = envbuild("verify", copy.demo, "--level", "files")
    assert verify.returncode == 0, verify.stdout


def test_a_guard_launch_marks_the_env_used(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    age(copy.store, copy.other)
    guard = subprocess.run([str(copy.other / "bin" / "envbuild-guard"), "--", "true"],
                           env={**os.environ, "ENVBUILD_RUNLOG": str(tmp_path / "r.jsonl")},
                           capture_output=True, text=True)
    assert guard.returncode == 0, guard.stderr
    assert (copy.store / "used" / copy.other.name).stat().st_mtime > OLD + 86400
    assert "unused" not in envbuild("gc", "--store", copy.store, "--dry-run").stdout


def test_gc_leaves_an_env_whose_build_lock_is_held(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    age(copy.store, copy.demo, copy.other)
    lock = copy.store / "locks" / f"{copy.demo.name}.lock"
    with exclusive(lock):
        res = envbuild("gc", "--store", copy.store, "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert [r["path"] for r in result["removed"]] == [str(copy.other)]
    assert {"path": str(copy.demo), "size_bytes": 0,
            "why": "a build of its key holds the lock"} in result["kept"]
    assert copy.demo.is_dir() and not copy.other.exists()


def test_gc_never_chmods_a_file_hardlinked_from_outside(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    age(copy.store, copy.other)
    inside = copy.other / "pyvenv.cfg"
    outside = tmp_path / "kept.cfg"
    os.link(inside, outside)
    mode, text = stat.S_IMODE(outside.stat().st_mode), outside.read_text()
    assert mode == 0o444
    res = envbuild("gc", "--store", copy.store)
    assert res.returncode == 0, res.stderr
    assert not copy.other.exists()
    assert stat.S_IMODE(outside.stat().st_mode) == mode and outside.read_text() == text
    assert outside.stat().st_nlink == 1


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's own tmp dirs are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="envbuild-gc-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_gc_as_a_non_root_owner_removes_read_only_envs(two: TwoEnvs, nobody_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test hands a store to user nobody: run it as root (CI does)")
    copy = copy_store(two, nobody_dir / "store")
    age(copy.store, copy.demo, copy.other)
    aside = copy.store / "envs" / f".damaged-{copy.other.name}-20200101T000000Z"
    shutil.copytree(copy.other, aside, symlinks=True)
    assert stat.S_IMODE(copy.demo.stat().st_mode) == 0o555
    assert stat.S_IMODE((copy.demo / "bin").stat().st_mode) == 0o555
    subprocess.run(["chown", "-R", "nobody:nogroup", str(copy.store)], check=True)
    # the Debian interpreter (pyenv's lives under /root), with this checkout and its venv's
    # site-packages on the path: envbuild as nobody
    site = subprocess.run([sys.executable, "-c", "import typer, os; "
                           "print(os.path.dirname(os.path.dirname(typer.__file__)))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(nobody_dir), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": f"{ROOT}:{site}"}
    res = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          "/usr/bin/python3.11", "-m", "envbuild", "gc", "--store",
                          str(copy.store)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert os.listdir(copy.store / "envs") == []
    lines = [line for line in res.stdout.splitlines()
             if line.split()[1] not in kept_pycs(copy.store)]
    assert len(lines) == 4   # three removed, the total


def test_bad_input_exits_2_and_changes_nothing(two: TwoEnvs, tmp_path: Path) -> None:
    copy = copy_store(two, tmp_path / "store")
    age(copy.store, copy.other)
    before = snapshot(copy.store)
    missing = tmp_path / "no-store"
    bad: list[list[str | Path]] = [["list", "--store", missing], ["gc", "--store", missing],
                                   ["show", "demo", "--store", missing]]
    for args in bad:
        res = envbuild(*args)
        assert res.returncode == 2, res
        assert res.stderr.startswith(f"envbuild: error: store: expected an envbuild store at "
                                     f"{missing}, found nothing; pass --store DIR")
        assert not missing.exists()
    cases: tuple[tuple[list[str | Path], str], ...] = (
        (["show", "nosuch", "--store", copy.store], "no env of that name"),
        (["show", tmp_path], "a directory without one"),
        (["show", tmp_path / "nothing"], "found nothing at"),
        (["gc", "--store", copy.store, "--keep-days", "-1"], "--keep-days"),
        (["gc", "--store", copy.store, "--keep-days", "soon"], "'--keep-days'"),
        (["list", "--store", copy.store / "used" / copy.other.name], "found a file"),
        (["list", "--store", tmp_path], "a directory without envs/"))
    for args, says in cases:
        res = envbuild(*args)
        assert res.returncode == 2, (args, res)
        assert says in res.stderr, (args, res.stderr)
    assert snapshot(copy.store) == before


def test_the_mark_of_use_is_named_by_the_path_alone(tmp_path: Path) -> None:
    from envbuild.layout import mark_used, usage_mark

    assert usage_mark("/s/envs/demo-0123456789abcdef") == "/s/used/demo-0123456789abcdef"
    assert usage_mark("/s/envs/demo-0123456789abcdef/") == "/s/used/demo-0123456789abcdef"
    for elsewhere in ("/root/.envs/demo-0123456789abcdef", "/local/demo-0123456789abcdef",
                      "/s/envs/.tmp-demo-0123456789abcdef-x"):
        assert usage_mark(elsewhere) is None, elsewhere
    env = tmp_path / "envs" / "demo-0123456789abcdef"
    env.mkdir(parents=True)
    mark_used(str(env))                     # no used/ dir: nothing made, no failure
    assert sorted(os.listdir(tmp_path)) == ["envs"]
    (tmp_path / "used").mkdir()
    mark_used(str(env))                     # the first use makes the mark
    assert os.listdir(tmp_path / "used") == [env.name]
