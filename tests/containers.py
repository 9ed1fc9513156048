"""A real Docker engine per test session, and Debian base images with Python in it.

``start_engine(where)`` starts Debian's ``dockerd`` with everything of its own under
``where`` (data root, exec root, socket, pid file, an empty ``{}`` config file, its trust
key, its log), no iptables, no bridge and the vfs storage driver, so it needs nothing from
the host's docker setup and writes nothing to it. Containers have no network: run them with
``network_mode="none"``. It is stopped by the pid it started (SIGTERM, then SIGKILL of its
process group), anything still mounted under ``where`` is unmounted, and ``where`` removed.
The ``docker_engine`` fixture is one such engine for the session; a test that compares two
engines starts a second one with ``start_engine``.

``base_image(engine, suite)`` loads a suite's base image (see baseimages.py), made once per
machine, into an engine and returns its tag; the ``bookworm_image`` and ``trixie_image``
fixtures are those tags in the session engine.

A test module imports the fixture functions it uses (``from containers import
docker_engine_fixture, bookworm_image_fixture``, with ``# noqa: F401``); its tests take
them as ``docker_engine``, ``bookworm_image`` and ``trixie_image``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from types import TracebackType

import docker
import pytest
from baseimages import PYTHONS, archive_image_id, cached_archive, image_tag
from docker.errors import DockerException
from requests.exceptions import RequestException
from rootfs import RootfsError, mounts_under, remove_tree, umount

SOCKET_MAX = 107           # sun_path is 108 bytes, NUL included
LONGEST_SOCKET = "exec/containerd/containerd-debug.sock"   # its managed containerd's
START_TIMEOUT = 90.0       # dockerd answering its first ping
STOP_TIMEOUT = 30.0        # dockerd gone after SIGTERM
API_TIMEOUT = 300          # one API call (a load of a base image into vfs included)
LOG_TAIL = 30


class EngineError(Exception):
    """The engine could not be started or stopped; the message says why."""


class DockerEngine:
    """A dockerd this session started; `host` is its ``unix://`` URL."""

    def __init__(self, where: Path, proc: subprocess.Popen[bytes]) -> None:
        self.where = where
        self.proc = proc
        self.pid = proc.pid
        self.host = f"unix://{where / 'docker.sock'}"
        self.log = where / "dockerd.log"
        self.docker_config = where / "client-config"

    def client(self, timeout: int = API_TIMEOUT) -> docker.DockerClient:
        """A docker SDK client of this engine; close it (``contextlib.closing``)."""
        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def env(self) -> dict[str, str]:
        """os.environ for a docker client of this engine, never the host's configuration."""
        env = dict(os.environ)
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.docker_config))
        for key in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(key, None)
        return env

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop dockerd by its pid, unmount what is left under its dir, remove the dir."""
        try:
            _terminate(self.proc)
        finally:
            for mount in mounts_under(self.where):
                umount(mount)
            remove_tree(self.where)

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _exited(pid: int) -> bool:
    """Whether `pid`, a child, has exited; it is left unreaped, so its pid stays ours."""
    return _exit_status(pid) is not None


def _exit_status(pid: int) -> int | None:
    """A child's exit status (or the signal that ended it), without reaping it."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return None if info is None else info.si_status


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (dockerd stops its containers and its containerd), then SIGKILL its group."""
    if proc.returncode is None:     # not reaped: its pid and its group are still ours
        if not _exited(proc.pid):
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while not _exited(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)   # the group it leads, if anything is left
        except ProcessLookupError:
            pass
    proc.wait()


def dockerd_argv(where: Path) -> list[str]:
    exe = "/usr/sbin/dockerd"
    if not os.access(exe, os.X_OK):
        raise EngineError(f"expected Debian's dockerd at {exe}, found none (tests/run "
                          "installs it: apt-get install docker.io)")
    name = "envbuild-test-" + hashlib.sha256(os.fsencode(where)).hexdigest()[:12]
    return [exe, "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--storage-driver=vfs", "--data-root", str(where / "data"),
            "--exec-root", str(where / "exec"), "--host", f"unix://{where / 'docker.sock'}",
            "--pidfile", str(where / "dockerd.pid"), "--config-file", str(where / "daemon.json"),
            "--log-level", "warn",
            # a system containerd, if one runs, is shared: keep this engine's apart
            "--containerd-namespace", name, "--containerd-plugins-namespace", f"{name}-plugins"]


def start_engine(where: Path) -> DockerEngine:
    """A new dockerd with all its state in `where` (made; must be new or empty, short path).

    Returns once it answers a ping; the caller stops it with ``.stop()`` (or ``with``).
    """
    sock = where.resolve() / LONGEST_SOCKET
    if len(os.fsencode(sock)) > SOCKET_MAX:
        raise EngineError(f"{sock}: a unix socket path must be at most {SOCKET_MAX} bytes; "
                          "give the engine a shorter dir")
    where.mkdir(parents=True, exist_ok=True)
    if any(where.iterdir()):
        raise EngineError(f"{where}: expected an empty dir for a new engine, found files")
    where = where.resolve()
    # its own config, so /etc/docker/daemon.json is never read; dockerd 20.10 takes its
    # trust key's path from there only, else it writes /etc/docker/key.json
    config = {"deprecated-key-path": str(where / "key.json")}
    (where / "daemon.json").write_text(json.dumps(config) + "\n")
    (where / "client-config").mkdir()
    argv = dockerd_argv(where)
    with open(where / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    engine = DockerEngine(where, proc)
    try:
        _wait_ready(engine)
    except BaseException:
        engine.stop()
        raise
    return engine


def _wait_ready(engine: DockerEngine) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while True:
        status = _exit_status(engine.pid)    # not reaped: stop() still ends its group
        if status is not None:
            raise EngineError(f"dockerd (pid {engine.pid}) exited (status {status}) before"
                              f" answering; its log ends:\n{engine.log_tail()}")
        try:
            # the SDK leaks the socket of a refused connection: try one of our own first
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(engine.where / "docker.sock"))
            with closing(engine.client(timeout=10)) as client:
                if client.ping():
                    return
        except (OSError, DockerException, RequestException) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise EngineError(f"dockerd (pid {engine.pid}) at {engine.host}: expected an answer"
                              f" to ping within {START_TIMEOUT:.0f}s, found none ({last}); its"
                              f" log ends:\n{engine.log_tail()}")
        time.sleep(0.2)


@pytest.fixture(scope="session", name="docker_engine")
def docker_engine_fixture() -> Iterator[DockerEngine]:
    """The session's engine, in a short dir of its own under the temp dir."""
    where = Path(tempfile.mkdtemp(prefix="ebd-"))
    try:
        engine = start_engine(where)
    except (EngineError, RootfsError, OSError) as exc:
        remove_tree(where)
        pytest.fail(f"cannot start a docker engine: {exc}", pytrace=False)
    with engine:
        yield engine


# --- base images ------------------------------------------------------------------------------


def base_image(engine: DockerEngine, suite: str) -> str:
    """The suite's base image (``localhost/debian-python:SUITE``) loaded into `engine`."""
    archive = cached_archive(suite)
    expected = archive_image_id(archive)
    with closing(engine.client()) as client, open(archive, "rb") as fh:
        loaded = client.images.load(fh)
        ids = [image.id for image in loaded]
        if ids != [expected]:
            raise EngineError(f"loading {archive}: expected image {expected}, found {ids}")
        tags = client.images.get(image_tag(suite)).tags
    if image_tag(suite) not in tags:
        raise EngineError(f"loading {archive}: expected tag {image_tag(suite)}, found {tags}")
    return image_tag(suite)


def _base_image_fixture(engine: DockerEngine, suite: str) -> str:
    try:
        return base_image(engine, suite)
    except (EngineError, RootfsError, DockerException) as exc:
        pytest.fail(f"cannot make the {suite} base image (Python {PYTHONS[suite]}): {exc}",
                    pytrace=False)


@pytest.fixture(scope="session", name="bookworm_image")
def bookworm_image_fixture(docker_engine: DockerEngine) -> str:
    """``localhost/debian-python:bookworm`` (Python 3.11) in the session engine."""
    return _base_image_fixture(docker_engine, "bookworm")


@pytest.fixture(scope="session", name="trixie_image")
def trixie_image_fixture(docker_engine: DockerEngine) -> str:
    """``localhost/debian-python:trixie`` (Python 3.13) in the session engine."""
    return _base_image_fixture(docker_engine, "trixie")
