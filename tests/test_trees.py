"""Builds from the store's installed trees (`--installer trees`, the default): the same
tree as pip's install, byte for byte, on every Python; link modes; a one-package change
that installs one wheel; damaged trees found and installed again; gc of linked envs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, envbuild, write_recipe
from pkgindex import LocalIndex
from test_interpreter import pyenv_python

MANIFEST = "envbuild-manifest.json"

# A wheel with what pip treats specially: a platlib root, .data scripts (one with a
# `#!python` line pip rewrites, one shell script, one setuptools wrapper pip leaves out for
# its own), headers, data files, purelib files in .data, console and gui entry points, an
# executable file, and a file its RECORD does not list.
ODD_FILES: dict[str, tuple[bytes, int]] = {
    "odd/__init__.py": (b'def main() -> None:\n    print("odd")\n', 0o644),
    "odd/cli.py": (b"def run() -> int:\n    return 0\n", 0o644),
    "odd/tool.sh": (b"#!/bin/sh\necho tool\n", 0o755),
    "odd/unrecorded.txt": (b"not in RECORD\n", 0o644),
    "odd-1.0.data/scripts/odd-run": (b"#!python\nimport odd\nodd.main()\n", 0o755),
    "odd-1.0.data/scripts/odd-sh": (b"#!/bin/sh\necho odd\n", 0o755),
    "odd-1.0.data/scripts/oddtool": (b"#!python\n# setuptools' wrapper\n", 0o755),
    "odd-1.0.data/headers/odd.h": (b"#define ODD 1\n", 0o644),
    "odd-1.0.data/data/share/odd/README": (b"odd data\n", 0o644),
    "odd-1.0.data/purelib/odd_pure.py": (b"PURE = True\n", 0o644),
    "odd-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: odd\nVersion: 1.0\n", 0o644),
    "odd-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\n"
                                b"Root-Is-Purelib: false\nTag: py3-none-any\n", 0o644),
    "odd-1.0.dist-info/entry_points.txt": (b"[console_scripts]\noddtool = odd:main\n"
                                           b"odd-cli = odd.cli:run\n\n"
                                           b"[gui_scripts]\noddgui = odd:main\n", 0o644),
}


def make_wheel(dest: Path, name: str, version: str, files: dict[str, tuple[bytes, int]],
               unrecorded: tuple[str, ...] = (), tag: str = "py3-none-any") -> Path:
    """A wheel of `files` (path: data and mode), its RECORD listing all but `unrecorded`."""
    dest.mkdir(parents=True, exist_ok=True)
    record = f"{name}-{version}.dist-info/RECORD"
    rows = []
    for path, (data, _mode) in files.items():
        if path not in unrecorded:
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append(f"{path},sha256={digest.decode()},{len(data)}\n")
    rows.append(f"{record},,\n")
    wheel = dest / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, (data, mode) in [*files.items(), (record, ("".join(rows).encode(), 0o644))]:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, data)
    return wheel


def odd_wheel(dest: Path) -> Path:
    return make_wheel(dest, "odd", "1.0", ODD_FILES, unrecorded=("odd/unrecorded.txt",))


def build_json(*args: str | Path) -> dict[str, Any]:
    res = cli("build", *args, "--json")
    assert res.exit_code == 0, res.stderr
    info: dict[str, Any] = json.loads(res.stdout)
    return info


def manifest_of(env: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((env / MANIFEST).read_bytes())
    return data


def same_but_key(pip_env: Path, trees_env: Path) -> None:
    """The two envs hold the same tree, sidecars and manifest, but for the installer's
    identity in env_key."""
    a, b = manifest_of(pip_env), manifest_of(trees_env)
    assert a["env_key"] != b["env_key"]
    assert {k: v for k, v in a.items() if k != "env_key"} == \
        {k: v for k, v in b.items() if k != "env_key"}
    assert (pip_env / ".envbuild" / "files").read_bytes() == \
        (trees_env / ".envbuild" / "files").read_bytes()


def trees_in(store: Path) -> set[str]:
    return {p.name for p in (store / "trees").iterdir()} if (store / "trees").is_dir() else set()


@pytest.fixture(scope="module")
def odd_recipe(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Path:
    """A recipe of the odd wheel (find-links) and two of the local index's, locked."""
    work = tmp_path_factory.mktemp("odd")
    odd_wheel(work / "wheels")
    recipe = write_recipe(work, index, deps=["odd", "beta", "pthpkg"], name="odd")
    text = recipe.read_text()
    recipe.write_text(text.replace("[index]\n", '[index]\nfind-links = ["wheels/"]\n'))
    res = cli("lock", recipe)
    assert res.exit_code == 0, res.stderr
    return recipe


# ---- the same tree as pip's ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("version", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_trees_build_the_tree_pip_installs(tmp_path: Path, odd_recipe: Path,
                                           tools_store: Path, version: str) -> None:
    """pip's layout in every detail the odd wheel exercises, on every Python."""
    python = pyenv_python(version)
    recipe = tmp_path / "odd.toml"
    recipe.write_text(odd_recipe.read_text())
    (tmp_path / "wheels").symlink_to(odd_recipe.parent / "wheels")
    res = envbuild("lock", recipe, "--python", python, "--store", tools_store)
    assert res.returncode == 0, res.stderr
    store = tmp_path / "store"
    pip_env = Path(build_json(recipe, "--store", store, "--python", python,
                              "--installer", "pip")["path"])
    trees_env = Path(build_json(recipe, "--store", store, "--python", python,
                                "--link", "copy")["path"])
    same_but_key(pip_env, trees_env)
    site = next((trees_env / "lib").glob("python3.*/site-packages"))
    # what pip does, seen in the result
    assert (trees_env / "bin" / "odd-run").read_bytes().endswith(b"\nimport odd\nodd.main()\n")
    assert b"setuptools' wrapper" not in (trees_env / "bin" / "oddtool").read_bytes()
    assert (trees_env / "bin" / "oddgui").is_file()
    xy = version
    assert (trees_env / "include" / "site" / f"python{xy}" / "odd" / "odd.h").is_file()
    assert (trees_env / "share" / "odd" / "README").is_file()
    assert (site / "odd_pure.py").is_file()
    assert (site / "odd-1.0.dist-info" / "INSTALLER").read_text() == "pip\n"
    record = (site / "odd-1.0.dist-info" / "RECORD").read_text()
    assert "odd/unrecorded.txt,,\n" in record
    assert stat.S_IMODE((site / "odd" / "tool.sh").stat().st_mode) == 0o555
    res = envbuild("verify", trees_env, "--level", "full")
    assert res.returncode == 0, res.stdout + res.stderr
    res = envbuild("run", trees_env, "--", "odd-run")
    assert (res.returncode, res.stdout) == (0, "odd\n"), res.stderr


@pytest.mark.slow
@pytest.mark.network
def test_every_recipe_builds_the_same_tree_both_ways(tmp_path: Path) -> None:
    """recipes/: pip's install kept as the reference, from one wheel cache."""
    store = tmp_path / "store"
    for recipe in sorted((Path(__file__).parent.parent / "recipes").glob("*.toml")):
        pip_env = Path(build_json(recipe, "--store", store, "--installer", "pip")["path"])
        trees_env = Path(build_json(recipe, "--store", store)["path"])
        same_but_key(pip_env, trees_env)
        res = envbuild("verify", trees_env, "--level", "full")
        assert res.returncode == 0, f"{recipe.name}: {res.stdout}{res.stderr}"


# ---- link modes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_link_modes_give_one_manifest(tmp_path: Path, odd_recipe: Path) -> None:
    recipe = odd_recipe
    store = tmp_path / "store"
    first = build_json(recipe, "--store", store, "--link", "hardlink")
    env = Path(first["path"])
    site = next((env / "lib").glob("python3.*/site-packages"))
    tree_file = next((store / "trees").glob("*/root/lib/python3.*/site-packages/odd/cli.py"))
    assert (site / "odd" / "cli.py").stat().st_ino == tree_file.stat().st_ino
    for how in ("copy", None):
        again = build_json(recipe, "--store", store, "--force",
                           *(["--link", how] if how else []))
        assert again["manifest_digest"] == first["manifest_digest"]
        assert (site / "odd" / "cli.py").stat().st_ino != tree_file.stat().st_ino
        assert stat.S_IMODE((site / "odd" / "cli.py").stat().st_mode) == 0o444
    res = envbuild("verify", env, "--level", "full")
    assert res.returncode == 0, res.stdout


def test_reflink_where_the_file_system_has_none_exits_2(tmp_path: Path,
                                                        odd_recipe: Path) -> None:
    store = tmp_path / "store"
    res = envbuild("build", odd_recipe, "--store", store, "--link", "reflink")
    assert res.returncode == 2, res.stderr
    assert "--link reflink: expected a file system with reflinks" in res.stderr
    assert "--link copy" in res.stderr
    assert not (store / "envs").is_dir() or not any((store / "envs").iterdir())


@pytest.mark.parametrize("args,words", [
    (["--link", "symlink"], "--link: expected one of hardlink, reflink, copy, found 'symlink'"),
    (["--installer", "uv"], "--installer: expected one of trees, pip, found 'uv'"),
    (["--installer", "pip", "--link", "copy"], "--link copy: expected with --installer trees"),
])
def test_bad_link_or_installer_exits_2(tmp_path: Path, odd_recipe: Path, args: list[str],
                                       words: str) -> None:
    res = envbuild("build", odd_recipe, "--store", tmp_path / "store", *args)
    assert res.returncode == 2, res.stderr
    assert words in res.stderr
    assert not (tmp_path / "store" / "envs").exists()


# ---- one package changed, damage, gc ---------------------------------------------------------


@pytest.mark.slow
def test_a_one_package_change_installs_one_wheel(tmp_path: Path, index: LocalIndex) -> None:
    store = tmp_path / "store"
    old = write_recipe(tmp_path / "a", index, deps=["beta", "alpha==1.0", "gamma"])
    assert cli("lock", old).exit_code == 0
    build_json(old, "--store", store)
    before = trees_in(store)
    new = write_recipe(tmp_path / "b", index, deps=["beta", "alpha==2.0", "gamma"])
    assert cli("lock", new).exit_code == 0
    res = envbuild("build", new, "--store", store)
    assert res.returncode == 0, res.stderr
    assert "installing 1 of 3 wheels into the store" in res.stderr
    assert len(trees_in(store) - before) == 1
    alpha2 = index.find_links / "alpha-2.0-py3-none-any.whl"
    assert hashlib.sha256(alpha2.read_bytes()).hexdigest() in \
        "".join(trees_in(store) - before)


def twin_wheel(dest: Path, version: str) -> Path:
    """A release of `twin` whose modules but one are those of every other release."""
    meta = f"Metadata-Version: 2.1\nName: twin\nVersion: {version}\n".encode()
    return make_wheel(dest, "twin", version, {
        "twin/__init__.py": (b"from twin.same import SAME\n", 0o644),
        "twin/same.py": (b"SAME = {'a', 'b', 'c'}\n", 0o644),
        "twin/changed.py": (f"VERSION = {version!r}\n".encode(), 0o644),
        f"twin-{version}.dist-info/METADATA": (meta, 0o644),
        f"twin-{version}.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\n"
                                            b"Root-Is-Purelib: true\nTag: py3-none-any\n",
                                            0o644)})


@pytest.mark.slow
def test_a_new_release_takes_the_pycs_of_modules_it_left_as_they_were(
        tmp_path: Path, index: LocalIndex) -> None:
    """A module whose source and path a new release keeps gets the pyc compiled for the
    old one (the same bytes a compile gives: a store that never saw the old release builds
    the same tree); a changed module is compiled."""
    for version in ("1.0", "2.0"):
        twin_wheel(tmp_path / "wheels", version)
    recipes = {}
    for version in ("1.0", "2.0"):
        recipe = write_recipe(tmp_path / version, index, deps=[f"twin=={version}"],
                              name="twin")
        recipe.write_text(recipe.read_text().replace(
            "[index]\n", f'[index]\nfind-links = ["{tmp_path / "wheels"}"]\n'))
        assert cli("lock", recipe).exit_code == 0
        recipes[version] = recipe
    store, fresh = tmp_path / "store", tmp_path / "fresh"
    build_json(recipes["1.0"], "--store", store)
    new = Path(build_json(recipes["2.0"], "--store", store, "--link", "hardlink")["path"])
    again = Path(build_json(recipes["2.0"], "--store", fresh, "--link", "hardlink")["path"])
    assert manifest_of(new)["tree_digest"] == manifest_of(again)["tree_digest"]
    assert (new / ".envbuild" / "files").read_bytes() == \
        (again / ".envbuild" / "files").read_bytes()
    pycs = {p.name.split(".")[0]: p for p in next(new.glob("lib/python3.*/site-packages"))
            .joinpath("twin", "__pycache__").iterdir()}
    assert sorted(pycs) == ["__init__", "changed", "same"]
    old_trees = [t for t in (store / "trees").iterdir()
                 if json.loads((t / "tree.json").read_text())["artifact"].startswith("twin-1.0")]
    old_pycs = {p.name.split(".")[0]: p for p in old_trees[0].glob("root/lib/*/site-packages/"
                                                                    "twin/__pycache__/*.pyc")}
    for module in ("__init__", "same"):   # one inode: the old release's pyc, kept
        assert pycs[module].stat().st_ino == old_pycs[module].stat().st_ino
    assert pycs["changed"].stat().st_ino != old_pycs["changed"].stat().st_ino
    assert pycs["changed"].read_bytes() != old_pycs["changed"].read_bytes()
    res = envbuild("run", new, "--", "python", "-c", "import twin.changed as c; print(c.VERSION)")
    assert (res.returncode, res.stdout) == (0, "2.0\n"), res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", ["hardlink", "copy"])
def test_a_damaged_tree_is_installed_again(tmp_path: Path, odd_recipe: Path, how: str) -> None:
    store = tmp_path / "store"
    env = Path(build_json(odd_recipe, "--store", store, "--link", how)["path"])
    good = manifest_of(env)
    # two trees damaged: one build finds both and installs both wheels again
    victim = next((store / "trees").glob("*/root/lib/python3.*/site-packages/odd/cli.py"))
    os.chmod(victim, 0o644)
    victim.write_bytes(victim.read_bytes() + b"# changed\n")
    os.chmod(victim, 0o444)
    other = next((store / "trees").glob("*/root/lib/python3.*/site-packages/beta/__init__.py"))
    os.chmod(other, 0o644)    # its mode changed: a chmod -R through a hardlinked env
    res = envbuild("build", odd_recipe, "--store", store, "--link", how, "--force")
    assert res.returncode == 0, res.stderr
    assert "differs from its record (and 1 more trees); installing those wheels again" \
        in res.stderr, res.stderr
    assert "installing 2 of 4 wheels into the store" in res.stderr, res.stderr
    assert manifest_of(env) == good
    assert b"# changed" not in (env / victim.relative_to(victim.parents[4])).read_bytes()
    res = envbuild("verify", env, "--level", "full")
    assert res.returncode == 0, res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("how", ["copy", "hardlink"])
def test_a_strict_umask_changes_no_mode(tmp_path: Path, odd_recipe: Path, how: str) -> None:
    """The env's files have the modes recorded for them whatever the builder's umask."""
    store = tmp_path / "store"
    res = subprocess.run(["sh", "-c", 'umask 077 && exec "$@"', "sh", sys.executable, "-m",
                          "envbuild", "build", str(odd_recipe), "--store", str(store),
                          "--link", how], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    env = Path(res.stdout.strip())
    modes = {stat.S_IMODE(p.lstat().st_mode) for p in env.rglob("*")
             if p.is_file() and not p.is_symlink()}
    assert modes <= {0o444, 0o555}, modes
    res = envbuild("verify", env, "--level", "full")
    assert res.returncode == 0, res.stdout


def lsattr(path: Path) -> str:
    """`path`'s ext2/3/4 attributes as `lsattr -d` prints them (`T`: a top dir)."""
    res = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[0]


@pytest.mark.slow
def test_each_env_and_tree_starts_a_hierarchy_of_its_own(tmp_path: Path,
                                                        odd_recipe: Path) -> None:
    """On ext2/3/4 (tmp here), the store's `envs/` and `tmp/` (where envs, and trees
    before they are renamed into place, are made) carry `chattr +T`, so that the allocator
    starts each env and tree where it chooses, not among the inodes freed beside them; an
    existing store's get it at its next build. Nothing under them takes it: an env's and a
    tree's own dirs stay together."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                          text=True).stdout.strip()
    assert kind == "ext2/ext3", f"this test needs its tmp dir on ext2/3/4, not {kind}"
    store = tmp_path / "store"
    env = Path(build_json(odd_recipe, "--store", store, "--link", "copy")["path"])
    assert "T" in lsattr(store / "envs") and "T" in lsattr(store / "tmp")
    made = [env, *env.rglob("*"), *(store / "trees").rglob("*")]
    assert not [p for p in made if p.is_dir() and not p.is_symlink() and "T" in lsattr(p)]
    for sub in ("envs", "tmp"):   # as an older envbuild left them
        subprocess.run(["chattr", "-T", str(store / sub)], check=True)
    res = envbuild("build", odd_recipe, "--store", store, "--link", "copy", "--force")
    assert res.returncode == 0, res.stderr
    assert "T" in lsattr(store / "envs") and "T" in lsattr(store / "tmp")


@pytest.mark.slow
def test_gc_of_a_hardlinked_env_leaves_the_trees_modes(tmp_path: Path,
                                                       odd_recipe: Path) -> None:
    store = tmp_path / "store"
    env = Path(build_json(odd_recipe, "--store", store, "--link", "hardlink")["path"])
    files = [p for p in (store / "trees").rglob("*") if p.is_file()]
    modes = {p: (stat.S_IMODE(p.stat().st_mode), p.stat().st_nlink) for p in files}
    assert any(nlink > 1 for _mode, nlink in modes.values())
    old = os.stat(store).st_mtime - 10 * 86400
    os.utime(store / "used" / env.name, (old, old))
    stale = next(t for t in sorted((store / "trees").iterdir())   # no build used it
                 if any(t.rglob("*.pyc")))                           # for ten days
    os.utime(stale, (old, old))
    kept = list((store / "pycs").glob("by-source-*/*"))
    # each the cache's, its tree's and the hardlinked env's
    assert kept and all(p.stat().st_nlink == 3 for p in kept)
    res = envbuild("gc", "--store", store, "--keep-days", "1")
    assert res.returncode == 0, res.stderr
    assert not env.exists() and not stale.exists()
    left = list((store / "pycs").glob("by-source-*/*"))   # only those a tree still holds
    assert left and len(left) < len(kept) and all(p.stat().st_nlink > 1 for p in left)
    assert "pycs no installed wheel holds" in res.stdout + res.stderr
    files = [p for p in files if stale not in p.parents]
    assert {p: stat.S_IMODE(p.stat().st_mode) for p in files} == \
        {p: modes[p][0] for p in files}
    res = envbuild("build", odd_recipe, "--store", store, "--link", "hardlink")
    assert res.returncode == 0, res.stderr
    assert "installing 1 of 4 wheels into the store" in res.stderr   # the stale one
    res = envbuild("verify", res.stdout.strip(), "--level", "full")
    assert res.returncode == 0, res.stdout


@pytest.mark.slow
def test_reflink_is_the_default_on_xfs(xfs_tmp_path: Path, tmp_path: Path,
                                       odd_recipe: Path) -> None:
    """On a file system with reflinks the env's files are clones: other inodes sharing the
    store's blocks, each written on its own; the manifest is the copy's."""
    store = xfs_tmp_path / "store"
    res = envbuild("build", odd_recipe, "--store", store, "--json")
    assert res.returncode == 0, res.stderr
    assert "from the store (reflink)" in res.stderr
    info = json.loads(res.stdout)
    env = Path(info["path"])
    tree_file = next(store.glob("trees/*/root/lib/python3.*/site-packages/odd/__init__.py"))
    clone = env / tree_file.relative_to(tree_file.parents[4])
    assert clone.stat().st_ino != tree_file.stat().st_ino
    extents = subprocess.run(["filefrag", "-v", str(clone)], capture_output=True, text=True,
                             check=True).stdout
    assert "shared" in extents, extents
    copy = build_json(odd_recipe, "--store", tmp_path / "store", "--link", "copy")
    assert copy["manifest_digest"] == info["manifest_digest"]
    os.chmod(clone, 0o644)
    with clone.open("ab") as fh:
        fh.write(b"# written in the env\n")
    assert b"written in the env" not in tree_file.read_bytes()
    res = envbuild("verify", env, "--level", "full")
    assert res.returncode == 1 and "odd/__init__.py" in res.stdout


def test_a_wheel_the_installer_cannot_read_fails_naming_it(tmp_path: Path,
                                                           index: LocalIndex) -> None:
    """A .data dir named otherwise than the wheel's file name (pip takes it as data, the
    installer would not): exit 1, the wheel named, the way out given."""
    wheels = tmp_path / "r" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "nowheel-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("nowheel.py", "X = 1\n")
        archive.writestr("NoWheel-1.0.data/data/share/nowheel.txt", "data\n")
        archive.writestr("nowheel-1.0.dist-info/METADATA",
                         "Metadata-Version: 2.1\nName: nowheel\nVersion: 1.0\n")
        archive.writestr("nowheel-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n"
                         "Generator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("nowheel-1.0.dist-info/RECORD", "")
    recipe = write_recipe(tmp_path / "r", index, deps=["nowheel"], name="nowheel")
    recipe.write_text(recipe.read_text().replace(
        "[index]\n", '[index]\nfind-links = ["wheels/"]\n'))
    assert cli("lock", recipe).exit_code == 0
    res = envbuild("build", recipe, "--store", tmp_path / "store")
    assert res.returncode == 1, res.stderr
    assert "nowheel-1.0-py3-none-any.whl: expected a wheel the installer can read" in res.stderr
    assert "NoWheel-1.0.data/data/share/nowheel.txt: expected the wheel's .data dir to be " \
        "named nowheel-1.0.data" in res.stderr
    assert "`--installer pip`" in res.stderr
    assert not any((tmp_path / "store" / "envs").iterdir())
    res = envbuild("build", recipe, "--store", tmp_path / "store", "--installer", "pip")
    assert res.returncode == 0, res.stderr
    assert (Path(res.stdout.strip()) / "share" / "nowheel.txt").is_file()


@pytest.mark.slow
def test_wheel_tags_are_computed_only_for_a_wheel_of_one_platform_not_installed(
        tmp_path: Path, index: LocalIndex) -> None:
    """Where each entry has one wheel in the store and its tree for this interpreter, the
    wheel is the one an earlier build chose by its tags, so none are computed; nor are they
    for a pure wheel (`py3-none-any`) that every Python 3 installs. Without the trees, the
    platform wheel's tags are computed, and the same wheels are chosen. A build with every
    tree there imports no part of packaging at all (its answers about the recipe and pip's
    version are remembered per host: `memo`)."""
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "platpkg", "1.0", {
        "platpkg/__init__.py": (b"PLAT = 1\n", 0o644),
        "platpkg-1.0.dist-info/METADATA": (b"Metadata-Version: 2.1\nName: platpkg\n"
                                           b"Version: 1.0\n", 0o644),
        "platpkg-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\n"
                                        b"Root-Is-Purelib: false\n"
                                        b"Tag: py3-none-linux_x86_64\n", 0o644)},
        tag="py3-none-linux_x86_64")
    recipe = write_recipe(tmp_path, index, deps=["beta"], name="tags")
    recipe.write_text(recipe.read_text().replace(
        "[index]\n", '[index]\nfind-links = ["wheels/"]\n'))
    assert cli("lock", recipe).exit_code == 0
    plat = tmp_path / "plat.toml"
    plat.write_text(recipe.read_text().replace('"beta"', '"beta", "platpkg"').replace(
        'name = "tags"', 'name = "plat"'))
    assert cli("lock", plat).exit_code == 0
    store = tmp_path / "store"

    def build(which: Path) -> tuple[dict[str, Any], str]:
        """The build's result, and the packaging modules it imported ("-": none), as
        `-X importtime` (PYTHONPROFILEIMPORTTIME) lists every module a process imports."""
        res = envbuild("build", which, "--store", store, "--force", "--json",
                       env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
        assert res.returncode == 0, res.stderr
        imported = {line.rpartition("|")[2].strip() for line in res.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "envbuild.build" in imported, res.stderr
        packaging = " ".join(sorted(m for m in imported if m.startswith("packaging.")))
        return json.loads(res.stdout), packaging or "-"

    pure, _tags = build(recipe)
    first, _tags = build(plat)   # (pip chose the downloaded wheels by their tags)
    assert "platpkg-1.0-py3-none-linux_x86_64.whl" in (Path(first["path"]) /
                                                        MANIFEST).read_text()
    again, packaging = build(plat)
    assert packaging == "-"   # nor its version or specifier parsers: `memo`
    assert again["manifest_digest"] == first["manifest_digest"]
    (store / "trees").rename(store / "trees-aside")
    fresh, packaging = build(plat)
    assert "packaging.tags" in packaging.split()
    assert fresh["manifest_digest"] == first["manifest_digest"]
    (store / "trees-aside").rename(store / "trees-aside-2")
    (store / "trees").rename(store / "trees-aside")
    assert build(recipe) == (pure, "-")   # beta's pure wheel installed again: no tags


def test_files_are_shared_out_by_subtree_each_dir_made_once_parents_first(
        tmp_path: Path) -> None:
    """`link_trees` puts units in place side by side: every file is in one unit, every dir
    it needs is made once (the shallow ones first), a unit's dirs are one subtree's, each
    after its parent; and the env is the trees' files, whatever the share-out."""
    from envbuild.trees import UNIT_DEPTH, Tree, _batches, _units, link_trees

    site = "lib/python3.11/site-packages"
    rels = ["bin/tool", "top.pth", f"{site}/mod.py", f"{site}/pkg/__init__.py",
            f"{site}/pkg-1.0.dist-info/RECORD", *(f"{site}/pkg/sub{i}/m{j}.py"
                                                  for i in range(40) for j in range(5)),
            f"{site}/pkg/sub0/deeper/still/x.py", "share/a/b/c/d/e/f.txt"]
    src = tmp_path / "tree"
    files = {}
    for rel in rels:
        (src / "root" / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / "root" / rel).write_bytes(rel.encode())
        (src / "root" / rel).chmod(0o444)
        files[rel] = (0o444, len(rel.encode()), hashlib.sha256(rel.encode()).hexdigest())
    tree = Tree(src, files, {})
    shallow, units = _units([(rel, tree) for rel in rels])
    assert sorted(rel for _dirs, unit in units for rel, _tree in unit) == sorted(rels)
    needed = {"/".join(rel.split("/")[:n]) for rel in rels for n in range(1, rel.count("/") + 1)}
    unit_dirs = [d for dirs, _files in units for d in dirs]
    assert sorted(shallow + unit_dirs) == sorted(needed)   # each once
    assert all(d.count("/") + 1 < UNIT_DEPTH for d in shallow) and shallow == sorted(shallow)
    for dirs, unit in units:
        if dirs:
            top = dirs[0]
            assert top.count("/") + 1 == UNIT_DEPTH and dirs == sorted(dirs)
            assert all(d == top or d.startswith(top + "/") for d in dirs)
            assert all(rel.startswith(top + "/") for rel, _tree in unit)
    batches = _batches(units)
    assert sorted(id(u) for batch in batches for u in batch) == sorted(id(u) for u in units)
    assert len(batches) > 1
    env = tmp_path / "env"
    env.mkdir()
    linked = link_trees([tree], env, "copy")
    assert sorted(linked.dirs) == sorted(needed)
    assert all((env / rel).read_bytes() == rel.encode() for rel in rels)
