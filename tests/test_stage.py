"""Shared-disk staging on a local root: publish, pointer, history, rollback, gc and leases,
materialization, and kill -9 in the middle of publishing and of materializing."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Built, cli, envbuild

from envbuild.archive import file_sha256, pack, unpack


def _publish(env: Path, root: Path) -> dict[str, object]:
    res = cli("stage", "publish", env, "--root", root, "--json")
    assert res.exit_code == 0, res.stderr
    info: dict[str, object] = json.loads(res.stdout)
    return info


def _prefix(env: str | Path, *opts: str, extra: dict[str, str] | None = None) -> str:
    proc = envbuild("run", env, *opts, "--", "python", "-c",
                    "import sys; print(sys.prefix)", env={**os.environ, **(extra or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_publish_points_and_runs(tmp_path: Path, built: Built) -> None:
    root = tmp_path / "root"
    root.mkdir()
    info = _publish(built.env, root)
    pointer = root / "demo"
    assert info["pointer"] == str(pointer) and info["generation"] == 1
    assert os.readlink(pointer) == f".envs/{info['version']}"           # relative
    version = root / ".envs" / str(info["version"])
    assert (version / "envbuild-manifest.json").read_bytes() == (
        built.env / "envbuild-manifest.json").read_bytes()
    archive = version.with_name(version.name + ".tar")
    assert file_sha256(archive) == archive.with_name(archive.name + ".sha256").read_text().strip()
    assert _prefix(pointer) == str(version)                 # the version's own path
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert stat.S_ISLNK(mode) or not mode & 0o022, os.path.join(dirpath, name)
    assert not any((root / ".tmp").iterdir())
    again = _publish(built.env, root)                       # same version: no new copy
    assert (again["new"], again["generation"]) == (False, 2)


def test_history_rollback_and_gc(tmp_path: Path, built: Built, second: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    first = _publish(built.env, root)
    newer = _publish(second, root)
    pointer = root / "demo"
    assert _prefix(pointer).endswith(str(newer["version"]))
    rows = json.loads(cli("stage", "list", "--root", root, "--json").stdout)
    assert [(r["generation"], r["current"]) for r in rows] == [(1, False), (2, True)]
    res = cli("stage", "rollback", "demo", "--root", root)
    assert res.exit_code == 0, res.stderr
    assert _prefix(pointer).endswith(str(first["version"]))
    # gc keeps the current and one previous: nothing goes; with --keep 0 the other goes,
    # unless a run leased it within --min-age days
    assert cli("stage", "gc", "--root", root).stdout == ""
    lease = root / ".leases" / str(newer["version"])
    assert [p.name for p in lease.iterdir()] == [os.uname().nodename]   # the run above
    assert cli("stage", "gc", "--root", root, "--keep", "0").stdout == ""   # leased
    res = cli("stage", "gc", "--root", root, "--keep", "0", "--min-age", "0")
    assert res.stdout.split() == ["removed", str(newer["version"])]
    assert not (root / ".envs" / str(newer["version"])).exists()
    assert (root / ".envs" / str(first["version"])).is_dir()       # current stays
    res = cli("stage", "rollback", "demo", "--root", root)
    assert res.exit_code == 2 and "removed by gc" in res.stderr


def test_materialized_once_per_node(tmp_path: Path, built: Built) -> None:
    root, cache = tmp_path / "root", tmp_path / "local"
    root.mkdir()
    info = _publish(built.env, root)
    procs = [subprocess.Popen([sys.executable, "-m", "envbuild", "run", str(root / "demo"),
                               "--local", str(cache), "--", "python", "-c",
                               "import sys; print(sys.prefix)"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    local = cache / str(info["version"])
    assert {o.strip() for o, _ in outs} == {str(local)}
    assert sorted(p.name for p in cache.iterdir()) == [f".{info['version']}.lock",
                                                        str(info["version"])]
    assert _prefix(root / "demo", extra={"ENVBUILD_LOCAL": str(cache)}) == str(local)
    res = cli("run", built.env, "--local", str(cache), "--", "true")
    assert res.exit_code == 125 and "staged pointer" in res.stderr


def _killed_at(argv: list[str], marker: Path, when: str) -> None:
    """Start argv, SIGKILL it as soon as `marker` shows `when` (a path that appears)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(marker.glob(when)) and proc.poll() is None:
        assert time.monotonic() < deadline, f"{when} never appeared under {marker}"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_while_publishing_and_materializing(tmp_path: Path, built: Built) -> None:
    root, cache = tmp_path / "root", tmp_path / "local"
    root.mkdir()
    _killed_at([sys.executable, "-m", "envbuild", "stage", "publish", str(built.env),
                "--root", str(root)], root / ".tmp", "*/*")
    assert not (root / "demo").exists()                     # nothing half published
    info = _publish(built.env, root)
    assert envbuild("verify", root / "demo", "--level", "full").returncode == 0
    _killed_at([sys.executable, "-m", "envbuild", "run", str(root / "demo"), "--local",
                str(cache), "--", "true"], cache, ".tmp-*/*")
    assert not (cache / str(info["version"])).exists()
    assert _prefix(root / "demo", "--local", str(cache)) == str(cache / str(info["version"]))
    assert not list(cache.glob(".tmp-*"))


def test_archive_is_reproducible_and_unpacks_whole(tmp_path: Path, built: Built) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert pack(built.env, one, "demo.tar") == pack(built.env, two, "demo.tar")
    out = tmp_path / "out"
    out.mkdir()
    top = unpack(one / "demo.tar", out)
    proc = envbuild("verify", top, "--level", "full", "--expect", built.digest)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_input(tmp_path: Path, built: Built) -> None:
    res = cli("stage", "publish", built.env, "--root", tmp_path / "absent")
    assert res.exit_code == 2 and "staging root" in res.stderr
    res = cli("stage", "publish", tmp_path, "--root", tmp_path)
    assert res.exit_code == 2
    assert cli("stage", "rollback", "nope", "--root", tmp_path).exit_code == 2
    assert cli("stage", "list", "nope", "--root", tmp_path).exit_code == 2


def test_a_stale_lock_of_another_host_is_broken_after_its_lease(tmp_path: Path,
                                                                  built: Built) -> None:
    """A publisher on another node died holding the name's lock: its lease (the lock's
    mtime, refreshed while it works) runs out after 60 s and the lock is taken over."""
    root = tmp_path / "root"
    (root / ".locks").mkdir(parents=True)
    lock = root / ".locks" / "demo.lock"
    lock.write_text(json.dumps({"host": "node-gone", "boot_id": "x", "pid": 1, "start": "1",
                                "token": "theirs"}))
    old = time.time() - 120
    os.utime(lock, (old, old))
    info = _publish(built.env, root)
    assert info["generation"] == 1
    assert not lock.exists()                                  # taken over, then released


def test_max_readers_caps_the_shared_reads_and_every_node_gets_its_copy(
        tmp_path: Path, built: Built) -> None:
    root = tmp_path / "root"
    root.mkdir()
    info = _publish(built.env, root)
    procs = [subprocess.Popen([sys.executable, "-m", "envbuild", "run", str(root / "demo"),
                               "--local", str(tmp_path / f"node{n}"), "--max-readers", "1",
                               "--", "true"], stderr=subprocess.PIPE, text=True)
             for n in range(4)]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errs
    for n in range(4):
        assert (tmp_path / f"node{n}" / str(info["version"]) / "envbuild-manifest.json").is_file()
    assert not list((root / ".locks").glob("readers-*.lock"))   # each slot released
    res = cli("run", root / "demo", "--max-readers", "x", "--", "true")
    assert res.exit_code == 125 and "--max-readers" in res.stderr


def test_publishers_at_once_make_one_copy_and_a_generation_each(tmp_path: Path,
                                                                  built: Built) -> None:
    root = tmp_path / "root"
    root.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "envbuild", "stage", "publish",
                               str(built.env), "--root", str(root), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    infos = [json.loads(out) for out, _ in outs]
    assert sorted(int(i["generation"]) for i in infos) == [1, 2, 3]
    assert len({i["version"] for i in infos}) == 1
    assert [p.name for p in (root / ".envs").iterdir() if p.is_dir()] == [infos[0]["version"]]
    assert not list((root / ".tmp").iterdir())
    assert envbuild("verify", root / "demo", "--level", "full").returncode == 0
