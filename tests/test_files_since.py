"""filessince: after a clean files-level check, the next one on this host lists only the
inodes changed since (by their change time) and finds what the full comparison finds;
every input of the record's key, and every condition it is used under, gives the full
comparison when it changes."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Built
from sharedfs import (
    SharedRoot,
    shared_root_fixture,  # noqa: F401
)
from test_verify import SITE, add_file, rewrite, tampered_copy
from test_verify_files import _reference

from envbuild import filessince, findwalk, verify_files
from envbuild.verify import verify


class Finds:
    """The finds a check starts: "since" (of what changed) or "all"."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started: list[str] = []
        real = findwalk._spawn

        def spawn(env: str, out: int, argv: list[str]) -> int:
            self.started.append("since" if "-newerct" in argv else "all")
            return real(env, out, argv)

        monkeypatch.setattr(findwalk, "_spawn", spawn)
        monkeypatch.setattr(verify_files, "_MIN_LINES", 0)   # a find pays even here

    def check(self, env: Path, **kwargs: Any) -> tuple[list[str], list[str]]:
        """The files level's differences, and the finds it started."""
        self.started.clear()
        report = verify(str(env), level="files", **kwargs)
        return sorted(d.line() for d in report.differences), list(self.started)


@pytest.fixture
def env(built: Built, tmp_path: Path) -> Path:
    """A copy of the built env, older than a record's margin (a record is of the time a
    clean check began, less the margin: what changed in it is listed again)."""
    copy = tampered_copy(built, tmp_path)
    time.sleep(filessince.MARGIN_NS / 1e9 + 0.1)
    return copy


def test_a_clean_check_makes_the_next_list_only_what_changed(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finds = Finds(monkeypatch)
    assert finds.check(env) == ([], ["all"])
    assert finds.check(env) == ([], ["since"])
    rewrite(env / SITE / "delta.py", b"grown " * 10)                 # size
    (env / "bin" / "alpha").chmod(0o777)                              # permissions
    (env / SITE / "alpha-2.0.dist-info" / "METADATA").chmod(0o400)   # another mode
    os.chown(env / SITE / "alpha-2.0.dist-info" / "WHEEL", 12345, -1)   # owner
    found, started = finds.check(env)
    assert started == ["since"]   # changed files only: compared here, no full find
    assert found == _reference(env)
    for subject in (f"{SITE}/delta.py", "bin/alpha", f"{SITE}/alpha-2.0.dist-info/METADATA",
                    f"{SITE}/alpha-2.0.dist-info/WHEEL"):
        assert any(f": {subject}: " in line for line in found), (subject, found)


def test_what_only_the_full_comparison_reads_sends_the_check_there(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dir's entries changed (a file added, removed, renamed, a symlink retargeted, a
    file become a dir), the manifest or a sidecar changed: the full comparison, with the
    same findings as without the record."""
    finds = Finds(monkeypatch)
    assert finds.check(env) == ([], ["all"])
    add_file(env / SITE / "alpha" / "added.py", b"x = 1\n")
    (env / SITE / "gamma.py").unlink()
    (env / "bin" / "python3").unlink()
    (env / "bin" / "python3").symlink_to("/bin/sh")
    (env / SITE / "delta-1.0.dist-info" / "RECORD").unlink()
    (env / SITE / "delta-1.0.dist-info" / "RECORD").mkdir(mode=0o555)
    found, started = finds.check(env)
    assert started == ["since", "all"]
    assert found == _reference(env)
    for subject in (f"{SITE}/alpha/added.py", f"{SITE}/gamma.py", "bin/python3",
                    f"{SITE}/delta-1.0.dist-info/RECORD"):
        assert any(f": {subject}: " in line for line in found), (subject, found)


def test_a_changed_sidecar_sends_the_check_to_the_full_comparison(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finds = Finds(monkeypatch)
    assert finds.check(env) == ([], ["all"])
    sidecar = env / ".envbuild" / "files"
    rewrite(sidecar, sidecar.read_bytes().replace(b"\t0444\t", b"\t0555\t", 1))
    found, started = finds.check(env)
    assert started == ["since", "all"]
    assert found == _reference(env) != []


def test_a_top_level_change_is_no_record_to_use(env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    finds = Finds(monkeypatch)
    assert finds.check(env) == ([], ["all"])
    add_file(env / "top-level-added", b"x")
    found, started = finds.check(env)
    assert started == ["all"]
    assert found == _reference(env)
    assert any(": top-level-added: " in line for line in found)


def test_each_input_of_the_records_key_is_a_fresh_answer(
        env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finds = Finds(monkeypatch)
    assert finds.check(env)[1] == ["all"]
    assert finds.check(env)[1] == ["since"]
    # the trusted owners
    assert finds.check(env, trusted_uids=(4242,))[1] == ["all"]
    # the boot
    boot = tmp_path / "boot_id"
    boot.write_text("00000000-0000-0000-0000-000000000000\n")
    monkeypatch.setattr(filessince, "BOOT_ID", str(boot))
    assert finds.check(env)[1] == ["all"]
    assert finds.check(env)[1] == ["since"]
    # the manifest, byte for byte the same but another inode and change time
    manifest = env / "envbuild-manifest.json"
    shutil.copy2(manifest, tmp_path / "m")
    manifest.unlink()
    shutil.copy2(tmp_path / "m", manifest)
    assert finds.check(env) == ([], ["all"])
    # the env's root: another dir at the same path
    moved = tmp_path / "moved"
    env.rename(moved)
    shutil.copytree(moved, env, symlinks=True, copy_function=os.link)
    assert finds.check(env) == ([], ["all"])


def test_a_clock_set_since_is_no_record_to_use(env: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    finds = Finds(monkeypatch)
    real = time.time_ns
    for shift, expected in ((0, "all"), (-5, "all"), (0, "all"), (0, "since"), (5, "all")):
        monkeypatch.setattr(time, "time_ns", lambda s=shift: real() + s * 10**9)
        assert finds.check(env)[1] == [expected], shift


def test_only_a_full_comparison_makes_a_record_and_it_ages(
        env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write in flight when the record was made, or an edit of the disk while unmounted,
    has no later change time: the record's age bounds how long it can go unseen."""
    finds = Finds(monkeypatch)
    assert finds.check(env)[1] == ["all"]
    records = list(Path(os.environ["XDG_CACHE_HOME"]).glob("envbuild/hosts/*/files-since-*"))
    made = {r: r.read_bytes() for r in records}
    assert finds.check(env)[1] == ["since"]
    assert {r: r.read_bytes() for r in records} == made   # a check by the record: none made
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + filessince.MAX_AGE_NS)
    monkeypatch.setattr(time, "clock_gettime_ns",
                        lambda clock: time.clock_gettime(clock) * 1e9 + filessince.MAX_AGE_NS)
    assert finds.check(env)[1] == ["all"]


def test_an_env_named_through_a_symlink_is_judged_at_its_real_path(
        env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record is of the real dir: a change at its top level shows, and a copy swapped
    in behind the symlink is another dir."""
    finds = Finds(monkeypatch)
    link = tmp_path / "current"
    link.symlink_to(env)
    assert finds.check(link)[1] == ["all"]
    assert finds.check(link) == ([], ["since"])
    (env / "lib64").unlink()
    found, started = finds.check(link)
    assert started == ["all"]
    assert any(": lib64: " in line for line in found), found
    copy = tmp_path / "copy"
    shutil.copytree(env, copy, symlinks=True, copy_function=os.link)
    link.unlink()
    link.symlink_to(copy)
    assert finds.check(link)[1] == ["all"]


def test_a_record_is_kept_only_where_change_times_are_the_kernels(
        env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another file system (a network or FUSE one) or a mount inside the env: no record."""
    finds = Finds(monkeypatch)
    real = Path(filessince.MOUNTINFO).read_text()
    assert filessince.local_and_whole(str(env))
    for line in (f"99 1 0:99 / {env / 'lib'} rw - ext4 /dev/x rw\n",
                 f"99 1 0:99 / {tmp_path} rw - fuse.sshfs u@h:/x rw\n"):
        table = tmp_path / "mountinfo"
        table.write_text(real + line)
        monkeypatch.setattr(filessince, "MOUNTINFO", str(table))
        assert not filessince.local_and_whole(str(env))
        assert finds.check(env)[1] == ["all"]
        assert finds.check(env)[1] == ["all"]
    escaped = tmp_path / "a dir"
    escaped.mkdir()
    table.write_text(real + f"99 1 0:99 / {str(escaped).replace(' ', chr(92) + '040')} rw - "
                            "nfs4 h:/x rw\n")
    assert not filessince.local_and_whole(str(escaped))


def test_a_network_mount_keeps_no_record(shared_root: SharedRoot) -> None:
    """sshfs: its change times are the server's (SFTP has none of its own)."""
    inside = shared_root.a.path("envs")
    inside.mkdir(exist_ok=True)
    assert not filessince.local_and_whole(str(inside))
    assert not filessince.local_and_whole(str(shared_root.a.mountpoint))
