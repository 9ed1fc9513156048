"""The store's lock (`envbuild.store.exclusive`) between real processes, and where the store
is. Holders and waiters are real Python processes; dead holders die by kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import cli, envbuild, write_recipe
from pkgindex import LocalIndex

from envbuild import store as store_mod
from envbuild.store import LEASE_SECONDS, Store

WAIT = 60.0          # generous bound on anything that should happen "soon"
STILL = 1.0          # how long a waiter is watched to show it keeps waiting

# A process that takes the lock, says so, and holds it until its stdin closes.
HOLDER = r"""
import json, os, sys
from pathlib import Path
from envbuild import store
from envbuild.fsutil import atomic_write
if len(sys.argv) > 3:
    store.REFRESH_SECONDS = float(sys.argv[3])
lock, marker = Path(sys.argv[1]), Path(sys.argv[2])
with store.exclusive(lock, poll=0.02):
    # whole or absent: the test reads the marker as soon as it exists
    atomic_write(marker, json.dumps({"pid": os.getpid(), "lock": json.loads(lock.read_text())}))
    sys.stdin.read()
"""

# A process that prints its own owner record, exactly as the lock code makes it, then waits.
OWNER = r"""
import json, sys
from envbuild.store import _owner
print(json.dumps(_owner()), flush=True)
sys.stdin.read()
"""

# Many rounds of a read-modify-write inside the lock; an O_EXCL marker catches overlap.
WORKER = r"""
import os, sys, time
from pathlib import Path
from envbuild.store import exclusive
lock, shared, log, go, rounds = (Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
                                 Path(sys.argv[4]), int(sys.argv[5]))
inside = shared.with_name("inside")
while not go.exists():
    time.sleep(0.001)
me = str(os.getpid())
def note(what):
    with open(log, "a") as fh:
        fh.write(f"{what} {me}\n")
for _ in range(rounds):
    note("want")
    with exclusive(lock, poll=0.002):
        note("enter")
        fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        value = int(shared.read_text())
        time.sleep(0.003)
        shared.write_text(str(value + 1))
        os.close(fd)
        os.unlink(inside)
        note("leave")
    time.sleep(0.003)
"""


def _python(script: str, *args: object, stdin: int | None = subprocess.PIPE
            ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until(what: str, check: object) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Close its stdin (a holder's cue to release), wait for it, collect its output."""
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    proc.wait(timeout=WAIT)
    out, err = (pipe.read() if pipe and not pipe.closed else ""
                for pipe in (proc.stdout, proc.stderr))
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    return proc.returncode, out, err


@contextmanager
def _reaped(*procs: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            _finish(proc)


def _waiting(lock: Path) -> bool:
    """A waiter has written its owner record beside the lock and is trying to link it."""
    return any(".stale." not in p.name for p in lock.parent.glob(lock.name + ".*"))


def _dead_owner() -> dict[str, object]:
    """The owner record of a process of this host that has since been killed -9."""
    owner_proc = _python(OWNER)
    with _reaped(owner_proc):
        line = owner_proc.stdout.readline()  # type: ignore[union-attr]
        record: dict[str, object] = json.loads(line)
        assert record["pid"] == owner_proc.pid and record["start"]
        os.kill(owner_proc.pid, signal.SIGKILL)
        owner_proc.wait()
    return record


def _link_record(lock: Path, owner: dict[str, object]) -> None:
    """Put an owner record in place the way the code does: write it, then link it."""
    tmp = lock.with_name(f"{lock.name}.{owner['token']}")
    tmp.write_text(json.dumps(owner))
    os.link(tmp, lock)
    tmp.unlink()


# ---- mutual exclusion -----------------------------------------------------------------


@pytest.mark.parametrize("dead_holder_first", [False, True],
                         ids=["free-lock", "dead-holder-taken-over-by-all-at-once"])
def test_contending_processes_exclude_each_other(tmp_path: Path,
                                                 dead_holder_first: bool) -> None:
    """With a dead holder's record in place when they start, every worker judges it dead at
    once and moves it aside: one that moves a lock another has just taken must put it back."""
    lock, shared, log, go = (tmp_path / "x.lock", tmp_path / "counter", tmp_path / "log",
                             tmp_path / "go")
    shared.write_text("0")
    rounds, workers = (25, 3) if not dead_holder_first else (10, 6)
    if dead_holder_first:
        _link_record(lock, _dead_owner())
    procs = [_python(WORKER, lock, shared, log, go, rounds, stdin=subprocess.DEVNULL)
             for _ in range(workers)]
    with _reaped(*procs):
        go.touch()
        results = [_finish(p) for p in procs]
    for code, _out, err in results:
        assert code == 0, err
    assert int(shared.read_text()) == rounds * workers     # no lost update
    events = [line.split() for line in log.read_text().splitlines()]
    holder = None
    waited = 0
    wanting: dict[str, int] = {}
    for i, (what, pid) in enumerate(events):
        if what == "want":
            wanting[pid] = i
        elif what == "enter":
            assert holder is None, f"{pid} entered while {holder} held the lock"
            holder = pid
            # someone else held the lock between this process's want and its enter
            if any(e == ("enter") and p != pid for e, p in events[wanting.pop(pid):i]):
                waited += 1
        else:
            assert holder == pid
            holder = None
    assert waited > 0, "the processes never contended; the test proved nothing"
    assert not lock.exists()
    assert list(tmp_path.glob("x.lock.*")) == []


def test_live_holder_is_waited_for(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    holder = _python(HOLDER, lock, tmp_path / "held")
    with _reaped(holder):
        _until("the holder to take the lock", (tmp_path / "held").exists)
        held = json.loads((tmp_path / "held").read_text())
        assert held["lock"]["pid"] == holder.pid
        waiter = _python(HOLDER, lock, tmp_path / "second")
        with _reaped(waiter):
            _until("the waiter to start trying", lambda: _waiting(lock))
            time.sleep(STILL)
            assert waiter.poll() is None
            assert not (tmp_path / "second").exists(), "the waiter took a live holder's lock"
            assert json.loads(lock.read_text())["token"] == held["lock"]["token"]
            assert _finish(holder)[0] == 0
            _until("the waiter to take the released lock", (tmp_path / "second").exists)
            second = json.loads((tmp_path / "second").read_text())
            assert second["lock"]["pid"] == waiter.pid
            assert _finish(waiter)[0] == 0
    assert not lock.exists()


# ---- taking over from holders that are gone ------------------------------------------


def test_holder_killed_9_while_holding_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    holder = _python(HOLDER, lock, tmp_path / "held")
    with _reaped(holder):
        _until("the holder to take the lock", (tmp_path / "held").exists)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert lock.exists()                   # the dead holder's lock is still there
    waiter = _python(HOLDER, lock, tmp_path / "second")
    with _reaped(waiter):
        _until("the waiter to take over", (tmp_path / "second").exists)
        assert json.loads((tmp_path / "second").read_text())["lock"]["pid"] == waiter.pid
        code, _out, err = _finish(waiter)
    assert code == 0, err
    assert not lock.exists()


def test_record_of_a_dead_pid_on_this_host_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    _link_record(lock, _dead_owner())
    waiter = _python(HOLDER, lock, tmp_path / "second")
    with _reaped(waiter):
        _until("the waiter to take over", (tmp_path / "second").exists)
        assert json.loads((tmp_path / "second").read_text())["lock"]["pid"] == waiter.pid
        assert _finish(waiter)[0] == 0
    assert not lock.exists()


def test_takeover_lock_left_by_a_waiter_that_died_is_cleared(tmp_path: Path) -> None:
    """A waiter killed -9 while moving a dead holder's lock aside leaves `<lock>.takeover`;
    once that is old, the next waiter clears it and takes the lock over."""
    lock = tmp_path / "x.lock"
    record = _dead_owner()
    _link_record(lock, record)
    guard = tmp_path / "x.lock.takeover"
    guard.write_text(json.dumps(record))
    old = time.time() - store_mod.TAKEOVER_STALE_SECONDS - 5
    os.utime(guard, (old, old))
    waiter = _python(HOLDER, lock, tmp_path / "second")
    with _reaped(waiter):
        _until("the waiter to take over", (tmp_path / "second").exists)
        assert _finish(waiter)[0] == 0
    assert not lock.exists() and not guard.exists()


def test_record_of_a_live_process_is_waited_for_until_it_dies(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    owner_proc = _python(OWNER)
    with _reaped(owner_proc):
        record = json.loads(owner_proc.stdout.readline())  # type: ignore[union-attr]
        _link_record(lock, record)
        waiter = _python(HOLDER, lock, tmp_path / "second")
        with _reaped(waiter):
            _until("the waiter to start trying", lambda: _waiting(lock))
            time.sleep(STILL)
            assert not (tmp_path / "second").exists(), "took the lock of a live process"
            os.kill(owner_proc.pid, signal.SIGKILL)
            owner_proc.wait()
            _until("the waiter to take over", (tmp_path / "second").exists)
            assert _finish(waiter)[0] == 0


def test_record_with_a_reused_pid_is_taken_over(tmp_path: Path) -> None:
    """A live pid whose start time differs from the record's is another process."""
    lock = tmp_path / "x.lock"
    alive = _python(OWNER)
    with _reaped(alive):
        record = json.loads(alive.stdout.readline())  # type: ignore[union-attr]
        record["start"] = str(int(record["start"]) - 1)
        _link_record(lock, record)
        waiter = _python(HOLDER, lock, tmp_path / "second")
        with _reaped(waiter):
            _until("the waiter to take over", (tmp_path / "second").exists)
            assert _finish(waiter)[0] == 0
        assert alive.poll() is None


def _other_host_record() -> dict[str, object]:
    return {"host": "elsewhere-" + socket.gethostname(), "boot_id": "not-this-boot",
            "pid": os.getpid(), "start": store_mod._start_time(os.getpid()),
            "token": "0" * 32}


def test_other_host_holder_with_expired_lease_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    _link_record(lock, _other_host_record())
    old = time.time() - 10 * LEASE_SECONDS
    os.utime(lock, (old, old))
    waiter = _python(HOLDER, lock, tmp_path / "second")
    with _reaped(waiter):
        _until("the waiter to take over", (tmp_path / "second").exists)
        assert json.loads((tmp_path / "second").read_text())["lock"]["pid"] == waiter.pid
        assert _finish(waiter)[0] == 0
    assert not lock.exists()


def test_other_host_holder_with_live_lease_is_waited_for(tmp_path: Path) -> None:
    """On another host the pid means nothing here: only the lease counts."""
    lock = tmp_path / "x.lock"
    record = _other_host_record()
    record["pid"], record["start"] = 999_999_999, "1"     # no such process here
    _link_record(lock, record)
    waiter = _python(HOLDER, lock, tmp_path / "second")
    with _reaped(waiter):
        _until("the waiter to start trying", lambda: _waiting(lock))
        time.sleep(STILL)
        assert not (tmp_path / "second").exists(), "took a lock whose lease is live"
        # the other host stops refreshing: once its lease is over, the lock is taken over
        old = time.time() - 10 * LEASE_SECONDS
        os.utime(lock, (old, old))
        _until("the waiter to take over", (tmp_path / "second").exists)
        assert _finish(waiter)[0] == 0


def test_holder_refreshes_its_lease(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    holder = _python(HOLDER, lock, tmp_path / "held", 0.05)
    with _reaped(holder):
        _until("the holder to take the lock", (tmp_path / "held").exists)
        old = time.time() - 10 * LEASE_SECONDS
        os.utime(lock, (old, old))
        _until("the holder to refresh its lease",
               lambda: lock.stat().st_mtime > time.time() - LEASE_SECONDS)
        assert _finish(holder)[0] == 0
    assert not lock.exists()


# ---- where the store is ---------------------------------------------------------------


def test_locate_prefers_explicit_then_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, from_env = tmp_path / "explicit", tmp_path / "from-env"
    monkeypatch.setenv("ENVBUILD_STORE", str(from_env))
    assert Store.locate(explicit).root == explicit
    assert Store.locate(None).root == from_env
    for root in (explicit, from_env):
        for sub in ("wheels", "envs", "locks", "runs", "tmp"):
            assert (root / sub).is_dir()

    monkeypatch.chdir(tmp_path)
    assert Store.locate(Path("relative")).root == tmp_path / "relative"

    monkeypatch.delenv("ENVBUILD_STORE")
    default = Store.locate(None).root
    assert default.is_absolute()
    assert default.is_relative_to(Path(os.environ["XDG_CACHE_HOME"]))


@pytest.mark.slow
def test_build_honours_store_option_then_environment(index: LocalIndex,
                                                      tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", index)
    assert cli("lock", recipe).exit_code == 0
    explicit, from_env = tmp_path / "explicit", tmp_path / "from-env"
    env = dict(os.environ, ENVBUILD_STORE=str(from_env))

    res = envbuild("build", recipe, "--store", explicit, env=env)
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path.parent == explicit / "envs"
    assert not (from_env / "envs").exists() or os.listdir(from_env / "envs") == []

    res = envbuild("build", recipe, env=env)
    assert res.returncode == 0, res.stderr
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path.parent == from_env / "envs"
