"""A real network file system for the shared-disk tests: an export served by a private
``sshd`` on 127.0.0.1 and mounted with ``sshfs`` (FUSE), once per simulated node.

``start_server(where)`` starts Debian's ``/usr/sbin/sshd -D -e -f CONFIG`` with everything
of its own under ``where``: a config that names no file of the host's ssh setup, an ed25519
host key, an ``AuthorizedKeysFile`` holding a client key made for the test, its pid file and
its log. Its sftp subsystem is a small script that runs ``/usr/lib/openssh/sftp-server -e
-l DEBUG3`` with stderr appended to ``sftp-logs/sftp-PID.log``, one file per session (so per
mount). Every SFTP request the server gets is logged as ``debugN: request ID: OP ...`` before
it is answered, so a count taken after a call on a mount has returned is exact:
``FileServer.requests()``, ``.mark()`` and ``.requests_since(mark)``, ``.request_log()``
(one entry per request, such as ``lstat name "/x/y"`` or ``read "/x/y" (handle 0) off 0 len
4096``). FUSE releases a closed file asynchronously, so the server's ``close`` can arrive
after the call returned: ``.settle()`` waits for a quiet spell and returns a mark. sshd
needs its privilege separation dir ``/run/sshd``, made here when missing as
Debian's service would; nothing else outside ``where`` is written.

``mount(server, export, mountpoint, name)`` runs ``sshfs -f -F SSH_CONFIG`` (an ssh client
config of ours: the client key, a known_hosts with the server's host key, strict checking,
batch mode, the port) with ``-o reconnect`` and sshfs's default caches. Two mounts of one
export are two nodes with client caches of their own. Stopped by ``fusermount3 -u`` (else
``umount --lazy``) of that mountpoint and then by its pid.

What sshfs 3.7.3 (FUSE 3.14) does here, shown by test_sharedfs.py:
- Link targets are cached by the client (``dcache_link_timeout``, default 20 s), so a
  pointer swapped through one mount is read stale through the other for up to 20 s, and
  opening the path follows the stale target. A file opened fresh is current at once: each
  open sends ``open`` and ``lstat`` to the server and refreshes the cached attributes, and
  the page cache is not kept across opens (close-to-open).
- ``rename`` over an existing file works as is: OpenSSH's server offers
  ``posix-rename@openssh.com`` and sshfs uses it, so ``-o workaround=rename`` is not needed.
- ``os.link`` works (``hardlink@openssh.com``); through the mount every file reports
  ``st_nlink == 1`` and inode numbers of the client's own, never the server's.
- Symlinks are created verbatim, relative or absolute: ``transform_symlinks`` and
  ``follow_symlinks`` are off by default and stay off. Reading them is another matter:
  Debian's sshfs 3.7.3-1.2~deb12u1 (CVE-2026-47187) turns ``contain_symlinks`` on by
  default, and then ``readlink`` (and so any path through the link) of a target that is
  absolute or holds ``..`` fails with EPERM, after the server answered. A venv's
  ``bin/python -> /usr/bin/python3`` could not be used from such a mount. NFS and Lustre
  clients read every target verbatim, so ``mount`` passes ``-o no_contain_symlinks``
  when this sshfs knows the option (``contain_symlinks=True`` keeps Debian's default).

The ``shared_root`` fixture is one server, its export and two mounts of it for the session.
A test module imports it (``from sharedfs import shared_root_fixture``, ``# noqa: F401``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest
from daemons import (
    STOP_TIMEOUT,
    DaemonError,
    descendants,
    free_port,
    log_tail,
    mount_points,
    need,
    spawn,
    stop_child,
    stop_pids,
    wait_exit,
    wait_until,
)
from rootfs import RootfsError, remove_tree

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0     # sshd listening; a mount in /proc/self/mountinfo
QUIET = 0.5              # no request for this long: the server has settled
_REQUEST = re.compile(r"^debug\d: request (\d+): (\S+)(.*)$")


class SharedFsError(DaemonError):
    """The file server or a mount could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class Mark:
    """How many requests each session log held when the mark was taken."""

    counts: dict[str, int] = field(default_factory=dict)


# --- the server ----------------------------------------------------------------------------


class FileServer:
    """An sshd this session started, serving SFTP on ``HOST:port``."""

    def __init__(self, where: Path, proc: subprocess.Popen[bytes], port: int) -> None:
        self.where = where
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.log = where / "sshd.log"
        self.sftp_logs = where / "sftp-logs"
        self.ssh_config = where / "ssh_config"
        self.user = "root" if os.getuid() == 0 else os.environ.get("USER", "root")

    def _requests(self) -> dict[str, list[str]]:
        """Each session log's requests in order, one entry per request id."""
        found: dict[str, list[str]] = {}
        for log in sorted(self.sftp_logs.glob("sftp-*.log")):
            text = log.read_text(errors="replace")
            lines = text[:text.rfind("\n") + 1].splitlines()   # whole lines only
            seen: set[str] = set()
            entries = found.setdefault(log.name, [])
            for i, line in enumerate(lines):
                match = _REQUEST.match(line)
                if not match or match[2] == "sent" or match[1] in seen:
                    continue
                seen.add(match[1])
                following = lines[i + 1] if i + 1 < len(lines) else "debug"
                # the verbose line after a request names its path, when it has one
                plain = not following.startswith(("debug", "sent "))
                entries.append(following if plain else f"{match[2]}{match[3]}")
        return found

    def mark(self) -> Mark:
        return Mark({name: len(entries) for name, entries in self._requests().items()})

    def request_log(self, since: Mark | None = None) -> list[str]:
        """Requests since `since` (all when None), session log by session log."""
        counts = since.counts if since else {}
        return [entry for name, entries in self._requests().items()
                for entry in entries[counts.get(name, 0):]]

    def requests(self) -> int:
        return len(self.request_log())

    def requests_since(self, mark: Mark) -> int:
        return len(self.request_log(mark))

    def settle(self, quiet: float = QUIET, timeout: float = START_TIMEOUT) -> Mark:
        """A mark taken once no request came for `quiet` seconds: FUSE sends a file's
        ``release`` (so the server's ``close``) after close(2) has returned, so the last
        requests of a call can arrive after it. Count with ``mark = server.settle()``,
        the calls, then ``server.settle()`` again before ``requests_since(mark)``."""
        deadline = time.monotonic() + timeout
        mark = self.mark()
        while True:
            time.sleep(quiet)
            now = self.mark()
            if now == mark:
                return now
            if time.monotonic() > deadline:
                raise SharedFsError(f"expected the server to go quiet for {quiet}s within "
                                    f"{timeout:.0f}s; the last requests: "
                                    f"{self.request_log(mark)[-10:]}")
            mark = now

    def requests_of(self, sftp_pid: int) -> int:
        """Requests of one session (one mount), by its sftp-server's pid."""
        return len(self._requests().get(f"sftp-{sftp_pid}.log", []))

    def sftp_pids(self) -> list[int]:
        """The sftp-server processes that served this server's sessions (from log names)."""
        return [int(p.stem.split("-")[1]) for p in sorted(self.sftp_logs.glob("sftp-*.log"))]

    def log_tail(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        """Stop sshd and its connection processes (sessions of their own) by pid, then
        remove `where`."""
        left = descendants(self.pid) if self.proc.returncode is None else []
        try:
            stop_child(self.proc)
            stop_pids(left)
        finally:
            remove_tree(self.where)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _keygen(path: Path) -> str:
    proc = subprocess.run([need("ssh-keygen", "openssh-client"), "-q", "-t", "ed25519",
                           "-N", "", "-C", "envbuild-test", "-f", str(path)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SharedFsError(f"ssh-keygen -f {path}: expected exit 0, found "
                            f"{proc.returncode}: {proc.stderr.strip()}")
    return path.with_suffix(".pub").read_text().strip()


def _write_configs(where: Path, port: int) -> None:
    host_pub = _keygen(where / "host_key")
    (where / "authorized_keys").write_text(_keygen(where / "client_key") + "\n")
    (where / "known_hosts").write_text(f"[{HOST}]:{port} {host_pub}\n")
    (where / "sftp-logs").mkdir()
    wrapper = where / "sftp-server"
    wrapper.write_text(
        "#!/bin/sh\n# one log per session, named by the sftp-server's pid\n"
        f"exec {SFTP_SERVER} -e -l DEBUG3 2>>{shlex.quote(str(where))}/sftp-logs/sftp-$$.log\n")
    wrapper.chmod(0o755)
    settings = {
        "ListenAddress": HOST, "Port": str(port), "HostKey": where / "host_key",
        "AuthorizedKeysFile": where / "authorized_keys", "PidFile": where / "sshd.pid",
        "UsePAM": "no", "PermitRootLogin": "prohibit-password", "StrictModes": "no",
        "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no",
        "PubkeyAuthentication": "yes", "Subsystem": f"sftp {wrapper}",
    }
    (where / "sshd_config").write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
    client = {
        "IdentityFile": where / "client_key", "IdentitiesOnly": "yes",
        "UserKnownHostsFile": where / "known_hosts", "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes", "BatchMode": "yes", "Port": str(port),
    }
    (where / "ssh_config").write_text("".join(f"{k} {v}\n" for k, v in client.items()))


def start_server(where: Path) -> FileServer:
    """A new sshd with all its state in `where` (made; must be new or empty, no spaces).

    Returns once it listens; the caller stops it with ``.stop()`` (or ``with``).
    """
    sshd = need(SSHD, "openssh-server")
    need(SFTP_SERVER, "openssh-sftp-server")
    where.mkdir(parents=True, exist_ok=True)
    where = where.resolve()
    if any(where.iterdir()) or any(c.isspace() for c in str(where)):
        raise SharedFsError(f"{where}: expected an empty dir without spaces for a server")
    port = free_port()
    _write_configs(where, port)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    proc = spawn([sshd, "-D", "-e", "-f", str(where / "sshd_config")], where / "sshd.log")
    server = FileServer(where, proc, port)
    try:
        wait_until(lambda: "Server listening on" in server.log.read_text(errors="replace"),
                   proc, f"sshd listening on port {port}", START_TIMEOUT, server.log)
    except BaseException:
        server.stop()
        raise
    return server


# --- the mounts ----------------------------------------------------------------------------


class Mount:
    """An sshfs of `export` at `mountpoint`, run with -f by this session."""

    def __init__(self, server: FileServer, export: Path, mountpoint: Path, name: str,
                 proc: subprocess.Popen[bytes], log: Path) -> None:
        self.server = server
        self.export = export
        self.mountpoint = mountpoint
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.log = log

    def path(self, inner: str | Path) -> Path:
        """Where a path relative to the export is seen through this mount."""
        return self.mountpoint / inner

    def mounted(self) -> bool:
        """In /proc/self/mountinfo (read without a call into the mount itself)."""
        return str(self.mountpoint) in mount_points()

    def log_tail(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        """Unmount (sshfs then exits), then stop what is left of its process group."""
        if self.mounted():
            unmount = shutil.which("fusermount3") or shutil.which("fusermount")
            done = unmount is not None and subprocess.run(
                [unmount, "-u", str(self.mountpoint)], capture_output=True).returncode == 0
            if not done:
                subprocess.run(["umount", "--lazy", str(self.mountpoint)],
                               capture_output=True, check=True)
            if self.proc.returncode is None:
                wait_exit(self.pid, STOP_TIMEOUT)   # sshfs exits once unmounted
        stop_child(self.proc)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _has_option(sshfs: str, option: str) -> bool:
    proc = subprocess.run([sshfs, "-h"], capture_output=True, text=True, timeout=30)
    return option in proc.stdout + proc.stderr


def mount(server: FileServer, export: Path, mountpoint: Path, name: str, *,
          contain_symlinks: bool = False) -> Mount:
    """`export` (a dir on the server) mounted at `mountpoint` (made; must be empty).

    `name` tells the node apart in logs: sshfs's log is ``sshfs-NAME.log`` beside the
    mountpoint. Symlinks read verbatim, as on NFS, unless `contain_symlinks` (the default
    of sshfs builds that have the option). Returns once the mount is in mountinfo.
    """
    sshfs = need("sshfs", "sshfs")
    need("fusermount3", "fuse3")
    mountpoint.mkdir(parents=True, exist_ok=True)
    mountpoint = mountpoint.resolve()
    log = mountpoint.parent / f"sshfs-{name}.log"
    options = ["reconnect", f"fsname=envbuild-{name}"]
    if not contain_symlinks and _has_option(sshfs, "no_contain_symlinks"):
        options.append("no_contain_symlinks")
    argv = [sshfs, f"{server.user}@{HOST}:{export.resolve()}", str(mountpoint), "-f",
            "-F", str(server.ssh_config), "-o", ",".join(options)]
    before = set(server.sftp_pids())
    mnt = Mount(server, export, mountpoint, name, spawn(argv, log), log)

    def connected() -> bool:
        """sshfs mounts first, then connects and checks the export (one ``lstat``)."""
        new = set(server.sftp_pids()) - before
        return bool(new) and server.requests_of(new.pop()) > 0

    try:
        wait_until(lambda: mnt.mounted() and connected(), mnt.proc,
                   f"sshfs {name} mounted at {mountpoint} and connected", START_TIMEOUT, log)
        os.stat(mountpoint)   # the kernel's first look at the root: done before any count
    except DaemonError as exc:
        mnt.stop()
        raise SharedFsError(f"{exc}\nsshd's log ends:\n{server.log_tail()}") from None
    return mnt


@dataclass(frozen=True)
class SharedRoot:
    """A file server, the dir it exports, and two nodes' mounts of that dir."""

    server: FileServer
    export: Path
    a: Mount
    b: Mount


@pytest.fixture(scope="session", name="shared_root")
def shared_root_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRoot]:
    """One export served by sshd and mounted twice (nodes a and b) for the session."""
    base = tmp_path_factory.mktemp("sharedfs")
    export = base / "export"
    export.mkdir()
    mounts: list[Mount] = []
    try:
        server = start_server(base / "server")
    except (DaemonError, RootfsError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot start the sshd file server: {exc}", pytrace=False)
    try:
        for name in ("a", "b"):
            mounts.append(mount(server, export, base / f"node-{name}", name))
    except (DaemonError, OSError, subprocess.SubprocessError) as exc:
        for mnt in mounts:
            mnt.stop()
        server.stop()
        pytest.fail(f"cannot mount the shared root with sshfs: {exc}", pytrace=False)
    try:
        yield SharedRoot(server, export, mounts[0], mounts[1])
    finally:
        for mnt in reversed(mounts):
            mnt.stop()
        server.stop()
