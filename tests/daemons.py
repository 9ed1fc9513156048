"""Daemons a test starts in the background and stops by the pid it started: spawning with
the log captured, bounded waits that end with the log's tail, and the process table.

Shared by sharedfs.py (sshd, sshfs) and slurmcluster.py (munged, slurmctld, slurmd).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path

STOP_TIMEOUT = 15.0      # a daemon gone after SIGTERM (or after its unmount)
LOG_TAIL = 30


class DaemonError(Exception):
    """A daemon or a tool it needs could not be started or stopped; the message says why."""


def need(path: str, package: str) -> str:
    """The absolute path of a program of Debian's `package`, or an error naming both."""
    found = path if os.path.isabs(path) else shutil.which(path)
    if not found or not os.access(found, os.X_OK):
        raise DaemonError(f"expected {path} (Debian's {package}), found none (tests/run "
                          f"installs it: apt-get install {package})")
    return found


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """argv in a session of its own (so its group is ours to end), output to `log`."""
    with open(log, "ab") as fh:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(env) if env is not None else None)


def exit_status(pid: int) -> int | None:
    """A child's exit status, without reaping it (so its pid and group stay ours)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return None if info is None else info.si_status


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while exit_status(pid) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str,
               timeout: float, log: Path) -> None:
    """Poll `ready` until true; fail early if `proc` exits, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        status = exit_status(proc.pid)
        if status is not None:
            raise DaemonError(f"{what}: its process (pid {proc.pid}) exited (status {status})"
                              f" first; {log.name} ends:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise DaemonError(f"{what}: expected within {timeout:.0f}s, still not so "
                              f"(pid {proc.pid}); {log.name} ends:\n{log_tail(log)}")
        time.sleep(0.05)


def stop_child(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM a child that leads its own process group, then SIGKILL what is left of it."""
    if proc.returncode is None:
        if exit_status(proc.pid) is None:
            proc.send_signal(signal.SIGTERM)
            wait_exit(proc.pid, timeout)
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # not reaped yet: the group is still ours
        except ProcessLookupError:
            pass
    proc.wait()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper that is not us counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Running processes below `pid`, its own sessions' included."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if alive(p)]


def stop_pids(pids: Sequence[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL, processes that are not our children (so not ours to reap)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            if alive(pid):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mount_points() -> set[str]:
    """Every mount point in /proc/self/mountinfo, read without a call into any mount."""
    points = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            point = line.split()[4]
            for esc, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"),
                              ("\\134", "\\")):
                point = point.replace(esc, char)
            points.add(point)
    return points
