"""The Slurm harness itself: munged, slurmctld and two slurmds started by the tests, with
srun, sbatch, salloc and sbcast working against them, and stopped by pid."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemons import alive, descendants
from slurmcluster import Cluster, slurm_fixture, start_cluster  # noqa: F401

pytestmark = pytest.mark.slow


def test_srun_runs_32_tasks(slurm: Cluster) -> None:
    out = slurm.check("srun", "-O", "-n32", "sh", "-c", "echo $SLURM_PROCID $SLURMD_NODENAME")
    lines = out.splitlines()
    assert len(lines) == 32, out
    assert sorted(int(line.split()[0]) for line in lines) == list(range(32))


def test_srun_spreads_over_both_nodes(slurm: Cluster) -> None:
    out = slurm.check("srun", "-N2", "--ntasks-per-node=2", "sh", "-c", "echo $SLURMD_NODENAME")
    assert sorted(out.split()) == ["node1", "node1", "node2", "node2"], out


def test_sbatch_wait_runs_a_script_and_writes_its_output(slurm: Cluster,
                                                         tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#SBATCH -n2\nsrun sh -c 'echo task $SLURM_PROCID'\n"
                      "echo batch done on $SLURMD_NODENAME\n")
    out = tmp_path / "job.out"
    slurm.check("sbatch", "--wait", f"--output={out}", script, cwd=tmp_path)
    lines = out.read_text().splitlines()
    assert sorted(lines[:2]) == ["task 0", "task 1"], lines
    assert lines[2:] in (["batch done on node1"], ["batch done on node2"]), lines


def test_sbcast_inside_an_allocation(slurm: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("broadcast payload\n")
    dest = tmp_path / "on-node" / "payload.txt"
    dest.parent.mkdir()
    out = slurm.check("salloc", "-N1", "sh", "-c", 'sbcast "$0" "$1" && srun cat "$1"',
                      src, dest)
    assert out == "broadcast payload\n"
    assert dest.read_text() == "broadcast payload\n"


def test_teardown_leaves_no_daemon(tmp_path: Path) -> None:
    with start_cluster(tmp_path / "cluster", nodes=1) as cluster:
        assert cluster.check("srun", "hostname").strip()
        ours = [*cluster.pids().values()]
        ours += [pid for top in cluster.pids().values() for pid in descendants(top)]
        assert sorted(cluster.pids()) == ["munged", "slurmctld", "slurmd-node1"]
    assert [pid for pid in ours if alive(pid)] == []
    assert not (tmp_path / "cluster").exists()
