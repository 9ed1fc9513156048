"""The quick level (every launch's check) is O(1) in the env's files: two envs that differ
only in one package's file count, 1,000 against 23,000, cost the same syscalls to check,
counted by strace; the files level, for contrast, grows with them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import cli, write_recipe
from pkgindex import build_index, bulk_dist

pytestmark = pytest.mark.slow

# Syscalls that name or read a path, or list a directory.
PATH_CALLS = {"open", "openat", "openat2", "stat", "lstat", "fstat", "newfstatat", "statx",
              "access", "faccessat", "faccessat2", "getdents64", "readlink", "readlinkat",
              "read"}
CHECK = ("import sys; sys.path.insert(0, sys.argv[1] + '/lib/envbuild-launch'); "
         "from envbuild.verify import verify; r = verify(sys.argv[1], level=sys.argv[2]); "
         "sys.exit(0 if r.ok else 1)")


def _counts(env: Path, level: str, where: Path) -> dict[str, int]:
    """{syscall: calls} of one check at `level` in the env's own interpreter, minus those
    of a bare start of it (`-I -S -c pass`)."""
    def run(*args: str) -> dict[str, int]:
        out = where / "strace.txt"
        proc = subprocess.run(["strace", "-f", "-c", "-o", str(out),
                               str(env / "bin" / "python"), "-I", "-S", "-c", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        counts: dict[str, int] = {}
        for line in out.read_text().splitlines():
            parts = line.split()
            if len(parts) in (5, 6) and parts[0][0].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3])
        return counts

    for _ in range(2):   # the per-host caches filled (interpreter, host libraries)
        run(CHECK, str(env), level)
    floor, check = run("pass"), run(CHECK, str(env), level)
    return {k: check.get(k, 0) - floor.get(k, 0) for k in PATH_CALLS}


def test_quick_level_syscalls_do_not_grow_with_files(tmp_path: Path) -> None:
    envs = []
    for version, count in (("1.0", 1_000), ("2.0", 23_000)):
        index = build_index(tmp_path / f"index-{count}", extra=(bulk_dist(version, count),))
        recipe = write_recipe(tmp_path / f"r{count}", index, deps=["alpha", f"bulk=={version}"])
        assert cli("lock", recipe).exit_code == 0
        res = cli("build", recipe, "--store", tmp_path / "store", "--json")
        assert res.exit_code == 0, res.stderr
        envs.append(Path(json.loads(res.stdout)["path"]))
    small, big = envs
    files = [len((env / ".envbuild" / "files").read_text().splitlines()) for env in envs]
    assert files[0] < 1_200 and files[1] > 23_000
    quick = [_counts(env, "quick", tmp_path) for env in envs]
    assert quick[1] == quick[0], {k: (quick[0][k], quick[1][k]) for k in PATH_CALLS
                                  if quick[0][k] != quick[1][k]}
    assert sum(quick[0].values()) > 0                  # the check did read the env
    per_file = [_counts(env, "files", tmp_path)["newfstatat"] for env in envs]
    assert per_file[1] - per_file[0] > 20_000          # the files level stats every path
