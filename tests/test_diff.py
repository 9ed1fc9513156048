"""`envbuild diff`: real envs built from the local index (a version change, a package added
and one removed, an artifact rebuilt at the same version, a changed contract), a file edited
after the build, another interpreter's manifest, run records made by real launches, a
`verify --json` report, a staged pointer; and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Built, cli, copy_env, envbuild, make_writable, write_recipe
from pkgindex import LocalIndex, _wheel_dists, _write_simple_index, build_index, write_wheel

MANIFEST = "envbuild-manifest.json"


DEBIAN_PYTHON = "/usr/bin/python3.11"   # tests/run installs it


@dataclass(frozen=True)
class Envs:
    a: Path        # alpha 1.0, gamma 1.0, delta; OMP_NUM_THREADS=1
    b: Path        # alpha 2.0, delta, pthpkg
    contract: Path  # as a, another contract
    rebuilt: Path  # as a, gamma 1.0 from a wheel rebuilt with other bytes
    work: Path


def _build(recipe: Path, store: Path) -> Path:
    assert cli("lock", recipe).exit_code == 0
    res = cli("build", recipe, "--store", store, "--json")
    assert res.exit_code == 0, res.stderr
    return Path(json.loads(res.stdout)["path"])


def _rebuilt_index(root: Path) -> LocalIndex:
    """The local index with gamma 1.0's wheel built again with other bytes."""
    other = build_index(root)
    gamma = next(d for d in _wheel_dists() if d.name == "gamma" and d.version == "1.0")
    (other.find_links / "gamma-1.0-py3-none-any.whl").unlink()
    write_wheel(str(other.find_links), gamma.name, gamma.version, gamma.metadata(),
                {"gamma.py": '__version__ = "1.0"  # rebuilt\n'}, gamma.entry_points())
    _write_simple_index(root / "simple", sorted(other.find_links.iterdir()))
    return other


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory, index: LocalIndex) -> Envs:
    work = tmp_path_factory.mktemp("diff")
    store = work / "store"
    base = ["alpha==1.0", "gamma==1.0", "delta"]
    omp = '[environment]\nset = { OMP_NUM_THREADS = "1" }\n'
    a = _build(write_recipe(work / "a", index, base, extra=omp), store)
    b = _build(write_recipe(work / "b", index, ["alpha==2.0", "delta", "pthpkg"], extra=omp),
               store)
    contract = _build(write_recipe(work / "c", index, base, extra=(
        '[environment]\nset = { OMP_NUM_THREADS = "2" }\nrequire = ["SCRATCH"]\n'
        '[launch]\nhook = true\n')), store)
    rebuilt = _build(write_recipe(work / "r", _rebuilt_index(work / "index2"), base,
                                  extra=omp), store)
    return Envs(a, b, contract, rebuilt, work)


def test_same_env_is_empty(envs: Envs) -> None:
    res = cli("diff", envs.a, envs.a)
    assert (res.exit_code, res.stdout) == (0, "")
    res = cli("diff", envs.a, envs.a / MANIFEST, "--json")
    assert (res.exit_code, json.loads(res.stdout)) == (0, [])


def test_version_added_and_missing(envs: Envs) -> None:
    res = cli("diff", envs.a, envs.b)
    assert res.exit_code == 1, res.stderr
    lines = res.stdout.splitlines()
    assert "version: alpha: 1.0 -> 2.0" in lines
    assert "added: pthpkg: 1.0" in lines
    assert "missing: gamma: 1.0" in lines
    assert lines[0].startswith("manifest: digest: sha256:")
    # grouped by kind in DESIGN's order, sorted within
    kinds = [line.split(":")[0] for line in lines]
    order = ["manifest", "interpreter", "version", "modified", "added", "missing", "host",
             "environment", "permissions"]
    assert kinds == sorted(kinds, key=order.index)
    data = json.loads(cli("diff", envs.a, envs.b, "--json").stdout)
    assert {"kind": "version", "subject": "alpha", "expected": "1.0", "found": "2.0"} in data
    assert {"kind": "added", "subject": "pthpkg", "expected": "absent", "found": "1.0"} in data
    # B to A: the arrows turn round
    back = cli("diff", envs.b, envs.a).stdout.splitlines()
    assert "version: alpha: 2.0 -> 1.0" in back and "missing: pthpkg: 1.0" in back


def test_rebuilt_artifact_at_the_same_version(envs: Envs) -> None:
    a = json.loads((envs.a / MANIFEST).read_text())
    r = json.loads((envs.rebuilt / MANIFEST).read_text())
    old = next(d["sha256"] for d in a["distributions"] if d["name"] == "gamma")
    new = next(d["sha256"] for d in r["distributions"] if d["name"] == "gamma")
    assert old != new
    res = cli("diff", envs.a, envs.rebuilt, "--files")
    assert res.exit_code == 1
    assert f"modified: gamma 1.0 artifact: {old} -> {new}" in res.stdout.splitlines()
    assert not any(line.startswith("version:") for line in res.stdout.splitlines())
    # the files it changed, under gamma's name
    assert "gamma: " in res.stdout and "modified: lib/python" in res.stdout


def test_changed_contract_and_launch_policy(envs: Envs) -> None:
    lines = cli("diff", envs.a, envs.contract).stdout.splitlines()
    assert "environment: set OMP_NUM_THREADS: 1 -> 2" in lines
    assert "environment: require SCRATCH: required" in lines
    assert "manifest: launch.hook: false -> true" in lines
    assert not any(line.startswith(("version:", "added:", "missing:")) for line in lines)


def test_file_edit_with_files(envs: Envs, tmp_path: Path) -> None:
    copy = copy_env(envs.a, tmp_path / "copy")
    make_writable(copy)
    gamma = next(copy.glob("lib/python*/site-packages/gamma.py"))
    gamma.write_text(gamma.read_text() + "# edited\n")
    (copy / "bin" / "stray").write_text("x")
    assert cli("diff", envs.a, copy).exit_code == 0      # the manifests are the same
    res = cli("diff", envs.a, copy, "--files")
    assert res.exit_code == 1, res.stderr
    lines = res.stdout.splitlines()
    rel = str(gamma.relative_to(copy))
    assert "gamma: 1 modified" in lines
    at = lines.index("gamma: 1 modified")
    assert lines[at + 1].startswith(f"  modified: {rel}: sha256:")
    assert "(no distribution): 1 added" in lines
    assert "  added: bin/stray: present (added after the build)" in lines
    data = json.loads(cli("diff", envs.a, copy, "--files", "--json").stdout)
    assert [d["subject"] for d in data] == [rel, "bin/stray"]


def test_another_interpreter(envs: Envs) -> None:
    """A's recipe built by Debian's own Python 3.11 (another binary, another stdlib, the
    same lock): the diff names the interpreter, and nothing else about the packages."""
    res = cli("build", envs.work / "a" / "demo.toml", "--store", envs.work / "store",
              "--python", DEBIAN_PYTHON, "--json")
    assert res.exit_code == 0, res.stderr
    other_env = Path(json.loads(res.stdout)["path"])
    mine, other = json.loads((envs.a / MANIFEST).read_text()), json.loads(
        (other_env / MANIFEST).read_text())
    res = cli("diff", envs.a, other_env)
    assert res.exit_code == 1
    lines = res.stdout.splitlines()
    for field in ("path", "sha256", "stdlib_digest"):
        assert (f"interpreter: {field}: {mine['interpreter'][field]} -> "
                f"{other['interpreter'][field]}") in lines, lines
    assert not [line for line in lines if line.startswith(("version:", "added:", "missing:"))]


def _run(env: Path, log: Path, **extra: str) -> None:
    environ = {**os.environ, "ENVBUILD_RUNLOG": str(log), **extra}
    res = envbuild("run", env, "--", sys.executable, "-c", "pass", env=environ)
    assert res.returncode == 0, res.stderr


def test_run_records(envs: Envs, tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    _run(envs.a, log)
    _run(envs.b, log, OMP_NUM_THREADS="8")
    res = cli("diff", envs.a, f"{log}:1")
    assert (res.exit_code, res.stdout) == (0, ""), res.stdout
    res = cli("diff", envs.a, f"{log}:2")
    assert res.exit_code == 1
    lines = res.stdout.splitlines()
    digest_b = json.loads(log.read_text().splitlines()[1])["manifest_digest"]
    assert any(x.startswith("manifest: digest: sha256:") and x.endswith(digest_b)
               for x in lines)
    assert "version: alpha: 1.0 -> 2.0" in lines       # B's env is still there: what differed
    assert "environment: OMP_NUM_THREADS: 1 -> 8" in lines
    two = cli("diff", f"{log}:1", f"{log}:2").stdout.splitlines()
    assert "environment: OMP_NUM_THREADS: 1 -> 8" in two


def test_verify_report_from_another_node(envs: Envs, tmp_path: Path) -> None:
    """`verify --json` where the env was damaged, against the intact env: what differs there."""
    copy = copy_env(envs.a, tmp_path / "node-b")
    make_writable(copy)
    alpha = next(copy.glob("lib/python*/site-packages/alpha/__init__.py"))
    alpha.write_text(alpha.read_text().replace("1.0", "1.X"))
    res = subprocess.run([sys.executable, "-m", "envbuild", "verify", str(copy), "--level",
                          "full", "--json"], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    (tmp_path / "report.json").write_text(res.stdout)
    lines = cli("diff", envs.a, tmp_path / "report.json").stdout.splitlines()
    rel = str(alpha.relative_to(copy))
    assert any(x.startswith(f"modified: {rel}: sha256:") for x in lines), lines
    assert not any(x.startswith("manifest: digest") for x in lines)


def test_staged_pointer(envs: Envs, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    res = cli("stage", "publish", envs.a, "--root", tmp_path / "shared")
    assert res.exit_code == 0, res.stderr
    pointer = res.stdout.strip().splitlines()[-1]
    assert cli("diff", pointer, envs.a).exit_code == 0
    assert "version: alpha: 1.0 -> 2.0" in cli("diff", pointer, envs.b).stdout


def test_bad_input(envs: Envs, tmp_path: Path) -> None:
    res = cli("diff", envs.a, tmp_path / "nowhere")
    assert res.exit_code == 2 and "nowhere: expected an env dir" in res.stderr
    (tmp_path / "notes.txt").write_text("hello\n")
    res = cli("diff", tmp_path / "notes.txt", envs.a)
    assert res.exit_code == 2 and "expected an envbuild manifest" in res.stderr
    garbled = tmp_path / "g" / MANIFEST
    garbled.parent.mkdir()
    garbled.write_bytes((envs.a / MANIFEST).read_bytes()[:-40])
    res = cli("diff", envs.a, garbled)
    assert res.exit_code == 2 and "expected a JSON manifest" in res.stderr
    res = cli("diff", envs.a, tmp_path)
    assert res.exit_code == 2 and "not an envbuild env" in res.stderr
    res = cli("diff", envs.a, f"{tmp_path / 'notes.txt'}:1")
    assert res.exit_code == 2 and "expected a JSON run record" in res.stderr


def test_files_need_a_tree(built: Built, envs: Envs) -> None:
    """A manifest file has no tree of its own; of the same env it takes the other side's."""
    assert cli("diff", built.env, built.env / MANIFEST, "--files").exit_code == 0
    res = cli("diff", built.env, envs.a / MANIFEST, "--files")
    assert res.exit_code == 2 and "--files: " in res.stderr
