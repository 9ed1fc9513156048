"""The image bench's own engine and registry: Debian's `dockerd` and `docker-registry`,
each started with all its state under one dir of bench/out and stopped by the pid it got.

The engine runs with no iptables, no bridge and the vfs storage driver (containers have no
network: run them with `--network none`), its own data root, exec root, socket, pid file and
`--config-file`, so it reads and writes nothing of the host's docker setup. The registry
serves plain HTTP on 127.0.0.1 from a config file of its own.

Stands alone (stdlib and the docker SDK): the same ideas as tests/containers.py and
tests/registryserver.py, not their code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

import docker

DOCKERD = "/usr/sbin/dockerd"
REGISTRY = "/usr/bin/docker-registry"
SOCKET_MAX = 107                      # sun_path is 108 bytes, NUL included
LONGEST_SOCKET = "exec/containerd/containerd-debug.sock"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
API_TIMEOUT = 600                     # one API call: a vfs build or load can take minutes
CACHE = Path(os.environ.get("ENVBUILD_TEST_CACHE") or "/var/cache/envbuild-tests")
BASE_TAG = "localhost/debian-python:bookworm"


def fail(message: str) -> NoReturn:
    sys.exit(f"bench: {message}")


def _exited(pid: int) -> bool:
    """Whether `pid`, our child, has exited; left unreaped, so its pid stays ours."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def stop_process(proc: subprocess.Popen[bytes], group: bool = False) -> None:
    """SIGTERM to the process we started, then SIGKILL (of its group, if it leads one)."""
    if proc.returncode is None and not _exited(proc.pid):
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while not _exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    if proc.returncode is None:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)   # anything it left in its group
            elif not _exited(proc.pid):
                proc.kill()
        except ProcessLookupError:
            pass
    proc.wait()


def _mounts_under(where: Path) -> list[str]:
    prefix = str(where.resolve()) + "/"
    found = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


class Engine:
    """A dockerd the bench started; `host` is its unix:// URL."""

    def __init__(self, where: Path) -> None:
        where = where.absolute()
        if len(os.fsencode(where / LONGEST_SOCKET)) > SOCKET_MAX:
            fail(f"{where}: too long for the engine's sockets (at most {SOCKET_MAX} bytes); "
                 "pass a shorter --engine-dir")
        if not os.access(DOCKERD, os.X_OK):
            fail(f"expected Debian's dockerd at {DOCKERD}, found none "
                 "(apt-get install docker.io)")
        if where.exists():
            for mount in _mounts_under(where):
                subprocess.run(["umount", "-l", mount], check=False)
            shutil.rmtree(where)
        where.mkdir(parents=True)
        self.where = where
        self.host = f"unix://{where / 'docker.sock'}"
        (where / "daemon.json").write_text(json.dumps(
            {"deprecated-key-path": str(where / "key.json")}) + "\n")
        (where / "client-config").mkdir()
        name = "envbuild-bench-" + hashlib.sha256(os.fsencode(where)).hexdigest()[:12]
        argv = [DOCKERD, "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--storage-driver=vfs", "--data-root", str(where / "data"),
                "--exec-root", str(where / "exec"), "--host", self.host,
                "--pidfile", str(where / "dockerd.pid"),
                "--config-file", str(where / "daemon.json"), "--log-level", "warn",
                "--containerd-namespace", name,
                "--containerd-plugins-namespace", f"{name}-plugins"]
        with open(where / "dockerd.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=API_TIMEOUT)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` for a docker client of this engine, never the host's configuration."""
        env = {k: v for k, v in base.items()
               if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
        env.update(DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.where / "client-config"))
        return env

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                fail(f"dockerd exited with {self.proc.returncode} before answering:\n"
                     + self._log_tail())
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(str(self.where / "docker.sock"))
                client = self.client()
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except (OSError, docker.errors.DockerException):
                pass
            if time.monotonic() > deadline:
                fail(f"dockerd did not answer within {START_TIMEOUT:.0f} s:\n"
                     + self._log_tail())
            time.sleep(0.2)

    def _log_tail(self) -> str:
        log = self.where / "dockerd.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        """Stop dockerd by its pid (it stops its containers and containerd), unmount what is
        left under its dir, remove the dir."""
        stop_process(self.proc, group=True)
        for mount in _mounts_under(self.where):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.where, ignore_errors=True)


def base_archive() -> Path:
    """The bookworm base image (Python 3.11) as the container tests cache it."""
    found = sorted(CACHE.glob("debian-python-bookworm-*.docker.tar"))
    if not found:
        fail(f"no debian-python-bookworm-*.docker.tar in {CACHE}: the container tests make "
             "it (debootstrap, a few minutes, once per machine); run them once: "
             "bash tests/run tests/test_containers.py")
    return found[-1]


def load_base(engine: Engine) -> str:
    """Load the base archive into `engine`; its tag, checked to carry the archive's ID."""
    archive = base_archive()
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            fail(f"{archive}: no manifest.json")
        (entry,) = json.load(member)
    expected = "sha256:" + str(entry["Config"]).removesuffix(".json")
    client = engine.client()
    try:
        with open(archive, "rb") as fh:
            ids = [image.id for image in client.images.load(fh)]
        if ids != [expected]:
            fail(f"loading {archive}: expected image {expected}, found {ids}")
        if BASE_TAG not in client.images.get(expected).tags:
            fail(f"loading {archive}: expected the tag {BASE_TAG}")
    finally:
        client.close()
    return BASE_TAG


class Registry:
    """Debian's docker-registry serving plain HTTP on 127.0.0.1 from `where`."""

    def __init__(self, where: Path) -> None:
        if not os.access(REGISTRY, os.X_OK):
            fail(f"expected {REGISTRY}, found none (apt-get install docker-registry)")
        where = where.absolute()
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        self.where = where
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        self.host = f"127.0.0.1:{port}"
        config = where / "config.yml"
        config.write_text("\n".join([
            "version: 0.1", "log:", "  level: warn", "storage:", "  filesystem:",
            f"    rootdirectory: {where / 'data'}", "http:", f"  addr: {self.host}",
            "  secret: envbuild-bench-secret", ""]))
        with open(where / "registry.log", "wb") as log:
            self.proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                fail(f"docker-registry exited with {self.proc.returncode}:\n"
                     + (self.where / "registry.log").read_text(errors="replace"))
            try:
                opener.open(f"http://{self.host}/v2/", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return                       # it answers, whatever it says
            except OSError:
                if time.monotonic() > deadline:
                    fail(f"docker-registry did not answer http://{self.host}/v2/ in 60 s")
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.where, ignore_errors=True)
