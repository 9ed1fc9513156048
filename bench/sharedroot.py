"""A shared root for the staging bench: an export served by a private ``sshd`` on 127.0.0.1
and mounted with ``sshfs`` (FUSE), once per simulated node, with every SFTP request the
server answers counted from ``sftp-server -l DEBUG3``'s log.

The same setup as the tests' shared root (its own host key, client key, config, port, pid
file and logs under one dir; nothing of the host's ssh setup is read or written, except
sshd's privilege separation dir ``/run/sshd``, made when missing as Debian's service would),
written again here so the bench imports nothing from tests/. Two things differ:

- The request log is read incrementally (each session log from where the last count
  stopped), because a direct launch of a large env sends thousands of requests and 64 of
  them at once a few hundred thousand: re-reading whole logs at every count would cost the
  bench more than what it measures.
- ``settle`` waits until no session log has grown for a quiet spell (the file sizes, no
  parsing): FUSE sends a file's release (the server's ``close``) after close(2) returned, so
  the last requests of a launch can arrive after it exited.

sshfs 3.7.3 on Debian 12 turns ``contain_symlinks`` on by default, and then an absolute
link target (a venv's ``bin/python -> /usr/bin/python3.11``) cannot be read through the
mount: ``mount`` passes ``-o no_contain_symlinks`` when this sshfs knows the option, as an
NFS or Lustre client reads every target verbatim. Otherwise sshfs's default caches
(attributes, directory entries and link targets for 20 s).

Stdlib only; everything started here is stopped by the pid it was started with.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0     # sshd listening; a mount connected
STOP_TIMEOUT = 15.0
QUIET = 0.5              # no session log grew for this long: the server has settled
_REQUEST = re.compile(rb"^debug\d: request (\d+): (\S+)(?: status (\d+))?")
NO_SUCH_FILE = b"2"      # SSH_FX_NO_SUCH_FILE


class SharedRootError(Exception):
    """The file server or a mount could not be started or stopped; the message says why."""


def need(path: str, package: str) -> str:
    """The absolute path of a program of Debian's `package`, or an error naming both."""
    found = path if os.path.isabs(path) else shutil.which(path)
    if not found or not os.access(found, os.X_OK):
        raise SharedRootError(f"expected {path} (Debian's {package}), found none: "
                              f"apt-get install {package} (tests/run installs it)")
    return found


def _spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """argv in a session of its own (its process group is ours to end), output to `log`."""
    with open(log, "ab") as fh:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str,
                log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise SharedRootError(f"{what}: its process (pid {proc.pid}) exited with "
                                  f"{proc.returncode} first; {log} ends:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise SharedRootError(f"{what}: expected within {START_TIMEOUT:.0f} s, still not "
                                  f"so (pid {proc.pid}); {log} ends:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _alive(pid: int) -> bool:
    """Running (a zombie that is not ours to reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _descendants(pid: int) -> list[int]:
    """Running processes below `pid`, those in sessions of their own included (sshd's
    per-connection processes, their sftp-servers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if _alive(p)]


def _stop(proc: subprocess.Popen[bytes], others: Sequence[int] = ()) -> None:
    """SIGTERM our child (a group leader) and `others` (its descendants, by pid), then
    SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is None:
            proc.send_signal(sig)
        for pid in others:
            if _alive(pid):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while (proc.poll() is None or any(_alive(p) for p in others)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    proc.wait()


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _mount_points() -> set[str]:
    """Mount points from /proc/self/mountinfo, read without a call into any mount."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        return {line.split()[4].replace("\\040", " ") for line in fh}


@dataclass
class Requests:
    """SFTP requests the server got, by kind (``open``, ``read``, ``lstat``, ...), and
    those of them answered "no such file"."""

    kinds: Counter[str] = field(default_factory=Counter)
    missing: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.kinds + other.kinds, self.missing + other.missing)


# --- the server ----------------------------------------------------------------------------


class FileServer:
    """An sshd this bench started, serving SFTP on ``HOST:port``; it counts requests."""

    def __init__(self, where: Path, proc: subprocess.Popen[bytes], port: int) -> None:
        self.where = where
        self.proc = proc
        self.port = port
        self.log = where / "sshd.log"
        self.sftp_logs = where / "sftp-logs"
        self.ssh_config = where / "ssh_config"
        self.user = "root" if os.getuid() == 0 else os.environ.get("USER", "root")
        self._offsets: dict[Path, int] = {}     # bytes of each session log already counted
        self._pending: dict[Path, dict[bytes, str]] = {}   # request id: kind, until answered

    def _sizes(self) -> dict[Path, int]:
        return {p: p.stat().st_size for p in self.sftp_logs.glob("sftp-*.log")}

    def settle(self, quiet: float = QUIET) -> None:
        """Return once no session log grew for `quiet` seconds."""
        deadline = time.monotonic() + 120.0
        sizes = self._sizes()
        while True:
            time.sleep(quiet)
            now = self._sizes()
            if now == sizes:
                return
            if time.monotonic() > deadline:
                raise SharedRootError("expected the file server to go quiet within 120 s; "
                                      "it did not")
            sizes = now

    def take(self) -> Requests:
        """The requests logged since the last `take` (or since the server started). Call
        `settle` first."""
        got = Requests()
        for log in sorted(self.sftp_logs.glob("sftp-*.log")):
            start = self._offsets.get(log, 0)
            with open(log, "rb") as fh:
                fh.seek(start)
                data = fh.read()
            end = data.rfind(b"\n") + 1       # whole lines only
            self._offsets[log] = start + end
            pending = self._pending.setdefault(log, {})
            for line in data[:end].splitlines():
                match = _REQUEST.match(line)
                if not match:
                    continue
                if match[2] == b"sent":        # the answer: kept only when it is ENOENT
                    kind = pending.pop(match[1], "")
                    if match[3] == NO_SUCH_FILE:
                        got.missing[kind] += 1
                elif match[1] not in pending:  # a request may be logged twice
                    kind = match[2].decode()
                    pending[match[1]] = kind
                    got.kinds[kind] += 1
        return got

    def stop(self) -> None:
        _stop(self.proc, _descendants(self.proc.pid) if self.proc.poll() is None else [])


def _keygen(path: Path) -> str:
    subprocess.run([need("ssh-keygen", "openssh-client"), "-q", "-t", "ed25519", "-N", "",
                    "-C", "envbuild-bench", "-f", str(path)], check=True,
                   capture_output=True, timeout=60)
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
    server = {
        "ListenAddress": HOST, "Port": str(port), "HostKey": where / "host_key",
        "AuthorizedKeysFile": where / "authorized_keys", "PidFile": where / "sshd.pid",
        "UsePAM": "no", "PermitRootLogin": "prohibit-password", "StrictModes": "no",
        "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no",
        "PubkeyAuthentication": "yes", "Subsystem": f"sftp {wrapper}",
    }
    (where / "sshd_config").write_text("".join(f"{k} {v}\n" for k, v in server.items()))
    client = {
        "IdentityFile": where / "client_key", "IdentitiesOnly": "yes",
        "UserKnownHostsFile": where / "known_hosts", "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes", "BatchMode": "yes", "Port": str(port),
    }
    (where / "ssh_config").write_text("".join(f"{k} {v}\n" for k, v in client.items()))


def start_server(where: Path) -> FileServer:
    """A new sshd with all its state in `where` (made; must be new or empty, no spaces)."""
    sshd = need(SSHD, "openssh-server")
    need(SFTP_SERVER, "openssh-sftp-server")
    where.mkdir(parents=True, exist_ok=True)
    where = where.resolve()
    if any(where.iterdir()) or any(c.isspace() for c in str(where)):
        raise SharedRootError(f"{where}: expected an empty dir without spaces for a server")
    port = _free_port()
    _write_configs(where, port)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    server = FileServer(where, _spawn([sshd, "-D", "-e", "-f", str(where / "sshd_config")],
                                      where / "sshd.log"), port)
    try:
        _wait_until(lambda: "Server listening on" in server.log.read_text(errors="replace"),
                    server.proc, f"sshd listening on port {port}", server.log)
    except BaseException:
        server.stop()
        raise
    return server


# --- the mounts ----------------------------------------------------------------------------


class Mount:
    """An sshfs of the export at `mountpoint`, run in the foreground (-f) by this bench."""

    def __init__(self, mountpoint: Path, proc: subprocess.Popen[bytes]) -> None:
        self.mountpoint = mountpoint
        self.proc = proc

    def mounted(self) -> bool:
        return str(self.mountpoint) in _mount_points()

    def stop(self) -> None:
        """Unmount (sshfs then exits), then end what is left of it by pid."""
        if self.mounted():
            unmount = shutil.which("fusermount3") or "fusermount"
            if subprocess.run([unmount, "-u", str(self.mountpoint)],
                              capture_output=True).returncode != 0:
                subprocess.run(["umount", "--lazy", str(self.mountpoint)],
                               capture_output=True, check=True)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        _stop(self.proc)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


_NO_CONTAIN: dict[str, bool] = {}


def mount(server: FileServer, export: Path, mountpoint: Path) -> Mount:
    """`export` mounted at `mountpoint` (made; must be empty), with sshfs's default caches
    and symlink targets read verbatim. Returns once connected (the server has answered)."""
    sshfs = need("sshfs", "sshfs")
    need("fusermount3", "fuse3")
    if sshfs not in _NO_CONTAIN:
        helptext = subprocess.run([sshfs, "-h"], capture_output=True, text=True, timeout=30)
        _NO_CONTAIN[sshfs] = "no_contain_symlinks" in helptext.stdout + helptext.stderr
    mountpoint.mkdir(parents=True, exist_ok=True)
    mountpoint = mountpoint.resolve()
    options = ["reconnect", f"fsname=envbuild-bench-{mountpoint.name}"]
    if _NO_CONTAIN[sshfs]:
        options.append("no_contain_symlinks")
    log = mountpoint.parent / f"sshfs-{mountpoint.name}.log"
    before = set(server.sftp_logs.iterdir())
    mnt = Mount(mountpoint, _spawn([sshfs, f"{server.user}@{HOST}:{export.resolve()}",
                                    str(mountpoint), "-f", "-F", str(server.ssh_config),
                                    "-o", ",".join(options)], log))

    def connected() -> bool:
        """sshfs mounts first, then connects and checks the export (a logged request)."""
        return mnt.mounted() and any(p.stat().st_size > 0 and b"request" in p.read_bytes()
                                     for p in set(server.sftp_logs.iterdir()) - before)

    try:
        _wait_until(connected, mnt.proc, f"sshfs mounted at {mountpoint}", log)
        os.stat(mountpoint)
    except BaseException:
        mnt.stop()
        raise
    return mnt
