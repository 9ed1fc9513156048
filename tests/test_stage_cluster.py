"""Staging on a real network file system (an sshd export mounted twice with sshfs, as two
nodes with their own client caches) and under a real Slurm (two slurmd nodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Built, cli, envbuild
from sharedfs import SharedRoot, shared_root_fixture  # noqa: F401
from slurmcluster import Cluster, slurm_fixture  # noqa: F401

pytestmark = pytest.mark.slow

ENVBUILD = str(Path(sys.executable).with_name("envbuild"))
PREFIX = "import sys; print(sys.prefix)"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "slurm" / "stage-and-run.sbatch"


def _root(shared: SharedRoot, name: str) -> tuple[Path, Path]:
    """A staging root in the export, as node a and node b see it."""
    (shared.export / name).mkdir()
    return shared.a.path(name), shared.b.path(name)


def _publish(env: Path, root: Path) -> str:
    res = cli("stage", "publish", env, "--root", root, "--json")
    assert res.exit_code == 0, res.stderr
    return str(json.loads(res.stdout)["version"])


def _prefix(env: Path, *opts: str) -> str:
    proc = envbuild("run", env, *opts, "--", "python", "-c", PREFIX)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_republish_is_seen_at_once_through_the_other_node(
        shared_root: SharedRoot, built: Built, second: Path) -> None:
    on_a, on_b = _root(shared_root, "fresh")
    v1 = _publish(built.env, on_a)
    assert _prefix(on_b / "demo") == str(on_b / ".envs" / v1)
    assert os.readlink(on_b / "demo") == f".envs/{v1}"       # node b's cache holds v1 now
    v2 = _publish(second, on_a)
    assert _prefix(on_b / "demo") == str(on_b / ".envs" / v2)   # read fresh, not cached
    guard = subprocess.run([str(on_b / "demo" / "bin" / "envbuild-guard"), "--", "python",
                            "-c", PREFIX], capture_output=True, text=True)
    assert (guard.returncode, guard.stdout.strip()) == (0, str(on_b / ".envs" / v2))
    proc = envbuild("verify", on_b / "demo", "--level", "files", "--json")
    assert json.loads(proc.stdout)["env"] == str(on_b / ".envs" / v2)
    assert not [p for p in (shared_root.export / "fresh").rglob("*")
                if not p.is_symlink() and p.stat().st_mode & 0o022]


def test_a_materialized_launch_sends_few_requests(shared_root: SharedRoot, built: Built,
                                                  tmp_path: Path) -> None:
    """Counted at the file server: a launch from node-local disk reads the current-version
    file and the lease, whatever the env's size; straight from the shared copy it reads
    every file the interpreter's start touches."""
    on_a, on_b = _root(shared_root, "counted")
    version = _publish(built.env, on_a)
    server, local = shared_root.server, tmp_path / "local"
    counts: dict[str, int] = {}
    for what, opts in (("cold", ("--local", str(local))), ("local", ("--local", str(local))),
                       ("direct", ())):
        mark = server.settle()
        _prefix(on_b / "demo", *opts)
        server.settle()
        counts[what] = server.requests_since(mark)
    assert (local / version).is_dir()
    assert counts["local"] <= 15, (counts, server.request_log())
    assert counts["direct"] > 5 * counts["local"], counts
    print(f"file-server requests per launch: {counts}")


def test_srun_32_tasks_materialize_once_per_node(slurm: Cluster, shared_root: SharedRoot,
                                                 built: Built, second: Path,
                                                 tmp_path: Path) -> None:
    on_a, on_b = _root(shared_root, "srun")
    local = tmp_path / "local"
    task = (f"{ENVBUILD} run {on_b}/demo --local {local}/$SLURMD_NODENAME -- "
            f"python -c '{PREFIX}'")
    for env in (built.env, second):          # a republish between two steps: seen whole
        version = _publish(env, on_a)
        out = slurm.check("srun", "-O", "-N2", "-n32", "sh", "-c", task)
        lines = out.split()
        assert len(lines) == 32, out
        assert set(lines) == {f"{local}/node1/{version}", f"{local}/node2/{version}"}, out
    for node in ("node1", "node2"):
        dirs = sorted(p.name for p in (local / node).iterdir() if p.is_dir())
        assert len(dirs) == 2 and not [d for d in dirs if d.startswith(".tmp")], dirs


def test_bcast_ships_the_archive_once_and_tasks_unpack_it(slurm: Cluster,
                                                          shared_root: SharedRoot,
                                                          built: Built, tmp_path: Path) -> None:
    on_a, on_b = _root(shared_root, "bcast")
    version = _publish(built.env, on_a)
    local = tmp_path / "local"
    script = (f"{ENVBUILD} stage fetch demo --root {on_b} --local {local} --bcast && "
              f"srun -n4 {ENVBUILD} run {on_b}/demo --local {local} -- python -c '{PREFIX}'")
    out = slurm.check("salloc", "-N1", "-n4", "sh", "-c", script)
    assert out.split()[-4:] == [str(local / version)] * 4, out
    assert (local / f"{version}.tar").is_file()            # what sbcast wrote


def test_the_example_batch_script(slurm: Cluster, shared_root: SharedRoot, built: Built,
                                  tmp_path: Path) -> None:
    on_a, on_b = _root(shared_root, "example")
    version = _publish(built.env, on_a)
    out_file = tmp_path / "job.out"
    slurm.check("sbatch", "-N1", "--wait", f"--output={out_file}",
                f"--export=ALL,SHARED={on_b},NAME=demo,ENVBUILD={ENVBUILD},"
                f"ENVBUILD_LOCAL={tmp_path / 'local'}", str(EXAMPLE))
    lines = [line.split() for line in out_file.read_text().splitlines() if line.strip()]
    tasks = [line for line in lines if len(line) == 2 and line[0].isdigit()]
    assert sorted(int(t[0]) for t in tasks) == list(range(32)), out_file.read_text()
    assert {t[1] for t in tasks} == {str(tmp_path / "local" / version)}
