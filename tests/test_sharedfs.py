"""The shared-root harness itself: an sshd file server and two sshfs mounts of one export,
with the client caches a real node has, and a count of what reaches the server."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemons import alive, descendants
from sharedfs import SharedRoot, mount, shared_root_fixture, start_server  # noqa: F401

pytestmark = pytest.mark.slow

# sshfs's client caches (dcache_*_timeout) keep entries for 20 s by default; a check of a
# stale read is only meaningful while the primed entry is surely still cached
CACHE_SURELY_VALID = 10.0
TRIES = 3


def _fresh_dir(root: SharedRoot, name: str) -> str:
    """A new dir in the export, made on the server's side; its name relative to the export."""
    (root.export / name).mkdir()
    return name


def _while_cached(check: Callable[[], bool]) -> None:
    """Run `check` (prime a cache, change through the other node, read) until it ran within
    the time the primed entry surely stays cached; a slow machine retries, never passes."""
    for _ in range(TRIES):
        start = time.monotonic()
        result = check()
        if time.monotonic() - start < CACHE_SURELY_VALID:
            assert result
            return
    pytest.fail(f"each of {TRIES} tries took over {CACHE_SURELY_VALID:.0f}s")


def test_a_file_written_through_one_node_is_read_through_the_other(
        shared_root: SharedRoot) -> None:
    d = _fresh_dir(shared_root, "written")
    shared_root.a.path(f"{d}/f").write_text("from node a\n")
    assert shared_root.b.path(f"{d}/f").read_text() == "from node a\n"
    assert (shared_root.export / d / "f").read_text() == "from node a\n"


def test_a_swapped_symlink_reads_stale_through_the_other_node_a_fresh_open_does_not(
        shared_root: SharedRoot) -> None:
    a, b = shared_root.a, shared_root.b
    tries = iter(range(TRIES))

    def swap() -> bool:
        d = _fresh_dir(shared_root, f"swap{next(tries)}")
        a.path(f"{d}/v1").write_text("one\n")
        a.path(f"{d}/v2").write_text("two\n")
        a.path(f"{d}/current").write_text("v1\n")
        os.symlink("v1", a.path(f"{d}/ptr"))
        assert os.readlink(b.path(f"{d}/ptr")) == "v1"          # primes b's caches
        assert b.path(f"{d}/current").read_text() == "v1\n"
        os.symlink("v2", a.path(f"{d}/ptr.new"))                 # swap through a
        os.replace(a.path(f"{d}/ptr.new"), a.path(f"{d}/ptr"))
        a.path(f"{d}/current.new").write_text("v2\n")
        os.replace(a.path(f"{d}/current.new"), a.path(f"{d}/current"))
        assert os.readlink(shared_root.export / d / "ptr") == "v2"
        # b: the link target from its cache, the small file opened fresh is current
        stale = os.readlink(b.path(f"{d}/ptr")) == "v1"
        followed = b.path(f"{d}/ptr").read_text()
        current = b.path(f"{d}/current").read_text()
        assert current == "v2\n", f"a fresh open through b read {current!r}"
        return stale and followed == "one\n"

    _while_cached(swap)


def test_a_listing_is_cached_a_lookup_by_name_is_not(shared_root: SharedRoot) -> None:
    a, b = shared_root.a, shared_root.b
    tries = iter(range(TRIES))

    def listing() -> bool:
        d = _fresh_dir(shared_root, f"listing{next(tries)}")
        assert os.listdir(b.path(d)) == []
        a.path(f"{d}/late").write_text("x")
        assert b.path(f"{d}/late").read_text() == "x"
        return os.listdir(b.path(d)) == []

    _while_cached(listing)


def test_hard_links_rename_over_and_symlinks_verbatim_through_a_mount(
        shared_root: SharedRoot) -> None:
    a, export = shared_root.a, shared_root.export
    d = _fresh_dir(shared_root, "links")
    a.path(f"{d}/f").write_text("data\n")
    os.link(a.path(f"{d}/f"), a.path(f"{d}/hard"))
    assert os.stat(export / d / "hard").st_ino == os.stat(export / d / "f").st_ino
    assert os.stat(export / d / "f").st_nlink == 2
    assert os.stat(a.path(f"{d}/f")).st_nlink == 1     # sshfs reports 1 for every file
    a.path(f"{d}/old").write_text("old\n")
    a.path(f"{d}/new").write_text("new\n")
    os.rename(a.path(f"{d}/new"), a.path(f"{d}/old"))   # over an existing file
    assert (export / d / "old").read_text() == "new\n"
    assert not (export / d / "new").exists()
    # relative with "..", and absolute: written and read verbatim on both nodes
    for i, target in enumerate(("../links/f", f"{export}/{d}/f", "../links/nowhere")):
        os.symlink(target, a.path(f"{d}/link{i}"))
        assert os.readlink(export / d / f"link{i}") == target
        assert os.readlink(shared_root.b.path(f"{d}/link{i}")) == target
    assert shared_root.b.path(f"{d}/link0").read_text() == "data\n"


def test_the_server_counts_requests(shared_root: SharedRoot) -> None:
    server, b = shared_root.server, shared_root.b
    d = _fresh_dir(shared_root, "counted")
    (shared_root.export / d / "f").write_text("x")
    mark = server.settle()      # what earlier tests left in flight has arrived
    time.sleep(2 * 1.0)         # past FUSE's attr and entry timeouts (1 s)
    assert server.requests_since(mark) == 0, server.request_log(mark)
    os.stat(b.path(f"{d}/f"))
    seen = server.request_log(mark)
    assert server.requests_since(mark) == len(seen) >= 1
    assert any(e.startswith("lstat") and e.endswith(f'/{d}/f"') for e in seen), seen
    assert server.requests() >= len(seen)


def test_teardown_leaves_no_process_and_no_mount(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    server = start_server(tmp_path / "server")
    with server:
        mnt = mount(server, export, tmp_path / "node", "t")
        with mnt:
            (mnt.path("f")).write_text("x")
            assert (export / "f").read_text() == "x"
            ours = [server.pid, mnt.pid, *descendants(server.pid), *descendants(mnt.pid),
                    *server.sftp_pids()]
            assert len(ours) >= 5, ours   # sshd, sshfs, its ssh, a session, sftp-server
        assert not mnt.mounted()
    assert [pid for pid in ours if alive(pid)] == []
    assert not (tmp_path / "server").exists()
