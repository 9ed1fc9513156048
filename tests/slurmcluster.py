"""A real Slurm on this machine for the staged-launch tests: Debian's munge and slurm-wlm,
started and stopped by pid, with everything of theirs under one dir.

``start_cluster(where, nodes=2)`` makes a munge key for the test (1024 random bytes, mode
0400) and starts ``munged -F`` on a socket of its own, then ``slurmctld -D -f CONF`` and
one ``slurmd -D -N NAME -f CONF`` per node, from a ``slurm.conf`` written under ``where``:
``AuthInfo=socket=...`` (so no client or daemon reads /etc/munge; the socket alone is in
a dir ``/tmp/ebmunge-*`` of its own, as munged refuses one below a 0700 dir), free ports,
state, spool, pid files and logs under ``where``, ``SlurmUser=root``,
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``,
``SelectType=select/cons_tres`` (``CR_CPU``), ``MpiDefault=none``.
Nothing under /etc/slurm or /etc/munge is read or written. Daemons log to stderr (``-D``),
captured in ``where/NAME.log``.

Nodes: ``node1``, ``node2``, ... all ``NodeHostname=127.0.0.1`` with a ``Port=`` of their own
and ``CPUs=32`` (``SlurmdParameters=config_overrides``: the CPU count declared, not this
machine's 2, so ``srun -n32`` needs no ``-O``; ``-O`` still works). The second node costs one
more slurmd and nothing else. All nodes share this host's file system: a node-local path
must carry ``$SLURMD_NODENAME`` to be per node, and ``sbcast`` to a job on both nodes
writes the same file twice (it refuses an existing file unless given ``-f``).

Clients (``srun``, ``sbatch``, ``salloc``, ``sbcast``, ``sinfo``) take ``Cluster.env()``:
this process's environment with ``SLURM_CONF`` set and no other ``SLURM_*`` variable.
``Cluster.run(...)`` runs one with a bounded wait. ``start_cluster`` returns once ``sinfo``
shows every node idle.

The ``slurm`` fixture is one such cluster (two nodes) for the session. A test module imports
it (``from slurmcluster import slurm_fixture``, ``# noqa: F401``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest
from daemons import (
    DaemonError,
    descendants,
    exit_status,
    free_port,
    log_tail,
    need,
    spawn,
    stop_child,
    stop_pids,
)
from rootfs import RootfsError, remove_tree, run_bounded

MUNGED = "/usr/sbin/munged"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
CPUS = 32
START_TIMEOUT = 60.0     # munged's socket; every node idle in sinfo
CLIENT_TIMEOUT = 120.0   # one client command


class ClusterError(DaemonError):
    """The cluster could not be started or a client failed; the message says why."""


class Cluster:
    """munged, slurmctld and slurmds this session started, all under `where`."""

    def __init__(self, where: Path, nodes: Sequence[str]) -> None:
        self.where = where
        self.nodes = list(nodes)
        self.conf = where / "slurm.conf"
        # munged wants every dir above its socket open to all (o+x), and pytest's temp
        # dirs are 0700: the socket gets a dir of its own under /tmp
        self.socket_dir = Path(tempfile.mkdtemp(prefix="ebmunge-"))
        self.socket_dir.chmod(0o755)
        self.munge_socket = self.socket_dir / "munge.socket"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}   # daemon name -> process

    def env(self) -> dict[str, str]:
        """os.environ for a Slurm client of this cluster; no job's SLURM_* leaks in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *argv: str | Path, timeout: float = CLIENT_TIMEOUT,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A client command with `env()`, in `cwd`; killed (its group) after `timeout`."""
        args = [str(a) for a in argv]
        if cwd is not None:     # run_bounded has no cwd: let a shell change into it
            args = ["sh", "-c", 'cd "$0" && exec "$@"', str(cwd), *args]
        try:
            return run_bounded(args, env=self.env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{' '.join(args)}: expected to finish within {timeout:.0f}s,"
                               f" still running; the daemons' logs end:\n{self.log_tail()}"
                               ) from None

    def check(self, *argv: str | Path, timeout: float = CLIENT_TIMEOUT,
              cwd: Path | None = None) -> str:
        """A client command's stdout; exit 0 expected, else its output and the logs."""
        proc = self.run(*argv, timeout=timeout, cwd=cwd)
        assert proc.returncode == 0, (
            f"{' '.join(map(str, argv))}: expected exit 0, found {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}\nthe daemons' logs end:\n"
            f"{self.log_tail()}")
        return proc.stdout

    def log(self, daemon: str) -> Path:
        return self.where / f"{daemon}.log"

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(f"--- {name}.log\n{log_tail(self.log(name), lines)}"
                         for name in self.procs)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop(self) -> None:
        """slurmds (and any step daemon left below them), slurmctld, munged, by pid; then
        remove `where`."""
        try:
            for name in reversed(list(self.procs)):     # started munged, ctld, nodes
                proc = self.procs[name]
                left = descendants(proc.pid) if proc.returncode is None else []
                stop_child(proc)
                stop_pids(left)
        finally:
            remove_tree(self.where)
            remove_tree(self.socket_dir)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def slurm_conf(where: Path, nodes: Sequence[str], munge_socket: Path) -> str:
    """The cluster's slurm.conf: free ports, everything of its own under `where`."""
    settings = [
        ("ClusterName", "envbuildtest"), ("SlurmctldHost", short_hostname()),
        ("SlurmctldPort", free_port()), ("SlurmUser", "root"), ("SlurmdUser", "root"),
        ("AuthType", "auth/munge"), ("CredType", "cred/munge"),
        ("AuthInfo", f"socket={munge_socket}"),
        ("ProctrackType", "proctrack/linuxproc"), ("TaskPlugin", "task/none"),
        ("SelectType", "select/cons_tres"), ("SelectTypeParameters", "CR_CPU"),
        ("SlurmdParameters", "config_overrides"), ("MpiDefault", "none"),
        ("SwitchType", "switch/none"), ("JobAcctGatherType", "jobacct_gather/none"),
        ("AccountingStorageType", "accounting_storage/none"), ("JobCompType", "jobcomp/none"),
        ("MailProg", "/bin/true"), ("ReturnToService", 2),
        ("StateSaveLocation", where / "state"), ("SlurmdSpoolDir", where / "spool" / "%n"),
        ("SlurmctldPidFile", where / "slurmctld.pid"),
        ("SlurmdPidFile", where / "slurmd-%n.pid"),
    ]
    lines = [f"{key}={value}" for key, value in settings]
    lines += [f"NodeName={node} NodeHostname=127.0.0.1 Port={free_port()} CPUs={CPUS} "
              "State=UNKNOWN" for node in nodes]
    lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _munge_key(path: Path) -> None:
    path.write_bytes(os.urandom(1024))
    path.chmod(0o400)


def start_cluster(where: Path, nodes: int = 2) -> Cluster:
    """munged, slurmctld and `nodes` slurmds with all their state in `where` (made; must
    be new or empty). Returns once every node is idle; stop it with ``.stop()``."""
    programs = [need(MUNGED, "munge"), need(SLURMCTLD, "slurmctld"), need(SLURMD, "slurmd")]
    for client in ("srun", "sbatch", "salloc", "sbcast", "sinfo"):
        need(client, "slurm-client")
    where.mkdir(parents=True, exist_ok=True)
    where = where.resolve()
    if any(where.iterdir()):
        raise ClusterError(f"{where}: expected an empty dir for a new cluster, found files")
    cluster = Cluster(where, [f"node{i}" for i in range(1, nodes + 1)])
    munge = where / "munge"
    munge.mkdir(mode=0o700)
    (where / "state").mkdir(mode=0o700)
    for node in cluster.nodes:
        (where / "spool" / node).mkdir(parents=True)
    _munge_key(munge / "munge.key")
    cluster.conf.write_text(slurm_conf(where, cluster.nodes, cluster.munge_socket))
    env = cluster.env()
    try:
        cluster.procs["munged"] = spawn(
            [programs[0], "-F", f"--socket={cluster.munge_socket}",
             f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
             f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"],
            cluster.log("munged"), env)
        _wait(cluster, cluster.munge_socket.exists, "munged's socket")
        cluster.procs["slurmctld"] = spawn([programs[1], "-D", "-f", str(cluster.conf)],
                                           cluster.log("slurmctld"), env)
        for node in cluster.nodes:
            cluster.procs[f"slurmd-{node}"] = spawn(
                [programs[2], "-D", "-N", node, "-f", str(cluster.conf)],
                cluster.log(f"slurmd-{node}"), env)
        _wait(cluster, lambda: _all_idle(cluster), f"nodes {', '.join(cluster.nodes)} idle")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _all_idle(cluster: Cluster) -> bool:
    proc = cluster.run("sinfo", "--noheader", "--Node", "--format=%N %T", timeout=30)
    states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    return proc.returncode == 0 and all(states.get(n) == "idle" for n in cluster.nodes)


def _wait(cluster: Cluster, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        for name, proc in cluster.procs.items():
            status = exit_status(proc.pid)
            if status is not None:
                raise ClusterError(f"{what}: {name} (pid {proc.pid}) exited (status "
                                   f"{status}) first; the logs end:\n{cluster.log_tail()}")
        if time.monotonic() > deadline:
            raise ClusterError(f"expected {what} within {START_TIMEOUT:.0f}s, still not so;"
                               f" the logs end:\n{cluster.log_tail()}")
        time.sleep(0.2)


@pytest.fixture(scope="session", name="slurm")
def slurm_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A two-node Slurm (node1, node2 on this host) for the session."""
    where = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start_cluster(where)
    except (DaemonError, RootfsError, OSError) as exc:
        pytest.fail(f"cannot start a Slurm cluster: {exc}", pytrace=False)
    with cluster:
        yield cluster
