"""The container harness itself: a real dockerd started and stopped by pid, and the Debian
base images with their Python, run with no network."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from baseimages import IMAGE_CMD, IMAGE_ENV, PYTHONS, archive_image_id, cached_archive
from containers import (  # noqa: F401
    DockerEngine,
    EngineError,
    base_image,
    bookworm_image_fixture,
    docker_engine_fixture,
    start_engine,
    trixie_image_fixture,
)
from rootfs import mounts_under, remove_tree

pytestmark = pytest.mark.slow

SUITES = sorted(PYTHONS)
VENV_CHECK = ("python3 -m venv /tmp/v && /tmp/v/bin/python -c "
              "'import sys; print(sys.prefix, sys.base_prefix, sys.version_info[:2])'")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A dir for an engine of its own, short enough for its sockets; removed after."""
    where = Path(tempfile.mkdtemp(prefix="ebd-"))
    yield where
    remove_tree(where)


def image_of(request: pytest.FixtureRequest, suite: str) -> str:
    return str(request.getfixturevalue(f"{suite}_image"))


def docker_cli() -> str:
    found = shutil.which("docker")
    assert found, "the docker CLI is not installed (tests/run installs docker.io)"
    return found


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def test_the_session_engine_answers_and_keeps_to_its_dir(docker_engine: DockerEngine) -> None:
    with closing(docker_engine.client()) as client:
        assert client.ping() is True
        info = client.info()
    assert info["Driver"] == "vfs"
    assert info["DockerRootDir"] == str(docker_engine.where / "data")
    assert docker_engine.host == f"unix://{docker_engine.where}/docker.sock"
    env = docker_engine.env()
    assert env["DOCKER_HOST"] == docker_engine.host
    assert Path(env["DOCKER_CONFIG"]).is_dir()
    assert Path(env["DOCKER_CONFIG"]).is_relative_to(docker_engine.where)
    assert b"/usr/sbin/dockerd" in _cmdline(docker_engine.pid)


@pytest.mark.parametrize("suite", SUITES)
def test_the_base_python_runs_and_makes_a_venv(request: pytest.FixtureRequest, suite: str,
                                               docker_engine: DockerEngine) -> None:
    tag = image_of(request, suite)
    assert tag == f"localhost/debian-python:{suite}"
    proc = subprocess.run(
        [docker_cli(), "run", "--rm", "--network", "none", tag, "/bin/sh", "-c",
         f"python3 -c 'import sys; print(sys.version)' && {VENV_CHECK}"],
        env=docker_engine.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    version, venv = proc.stdout.splitlines()
    assert version.startswith(PYTHONS[suite] + "."), proc.stdout
    major, minor = PYTHONS[suite].split(".")
    assert venv.split() == ["/tmp/v", "/usr", f"({major},", f"{minor})"]


@pytest.mark.parametrize("suite", SUITES)
def test_the_base_image_is_the_cached_archive(request: pytest.FixtureRequest, suite: str,
                                              docker_engine: DockerEngine) -> None:
    tag = image_of(request, suite)
    with closing(docker_engine.client()) as client:
        image = client.images.get(tag)
    assert image.id == archive_image_id(cached_archive(suite))
    assert image.attrs["Config"]["Env"] == IMAGE_ENV
    assert image.attrs["Config"]["Cmd"] == IMAGE_CMD
    assert len(image.attrs["RootFS"]["Layers"]) == 1


def test_a_second_engine_is_independent_and_stops_by_its_pid(
        docker_engine: DockerEngine, bookworm_image: str, short_dir: Path) -> None:
    where = short_dir / "second"
    with start_engine(where) as second:
        assert second.pid != docker_engine.pid
        with closing(second.client()) as client:
            assert client.images.list() == []       # nothing of the session engine's
            tag = base_image(second, "bookworm")
            assert tag == bookworm_image
            again = client.images.get(tag).id
        with closing(docker_engine.client()) as client:
            assert again == client.images.get(bookworm_image).id   # same ID on both engines
        containerd = _managed_containerd(second)
        sleeper = _sleeping_container(second, tag)   # stop() must end it too
    assert str(where).encode() not in b"".join(_cmdline(second.pid))
    assert str(where).encode() not in b"".join(_cmdline(containerd))
    assert _cmdline(sleeper)[:2] != [b"sleep", b"600"]
    assert not where.exists()
    assert mounts_under(where.parent) == []


def _sleeping_container(engine: DockerEngine, tag: str) -> int:
    """A container left running (``sleep 600``) in `engine`; the pid of its process."""
    with closing(engine.client()) as client:
        container = client.containers.run(tag, ["sleep", "600"], detach=True, stop_signal="KILL",
                                          network_mode="none")
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
    assert _cmdline(pid)[:2] == [b"sleep", b"600"]
    return pid


def _managed_containerd(engine: DockerEngine) -> int:
    """The pid of the containerd this engine started, read from its pid file."""
    pidfile = engine.where / "exec" / "containerd" / "containerd.pid"
    assert pidfile.is_file(), f"expected {pidfile} (dockerd's own containerd)"
    pid = int(pidfile.read_text().strip())
    assert str(engine.where).encode() in b"".join(_cmdline(pid))
    return pid


def test_a_long_dir_is_refused_before_dockerd_starts(tmp_path: Path) -> None:
    where = tmp_path / ("x" * 100)
    with pytest.raises(EngineError, match="at most 107 bytes"):
        start_engine(where)
    assert not where.exists()


def test_stop_removes_the_dir_when_dockerd_is_already_gone(short_dir: Path) -> None:
    where = short_dir / "gone"
    engine = start_engine(where)
    containerd = _managed_containerd(engine)
    os.kill(engine.pid, signal.SIGKILL)
    engine.stop()
    assert str(where).encode() not in b"".join(_cmdline(containerd))
    assert not where.exists()
