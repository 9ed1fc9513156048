"""The README's first command on a fresh Debian 13 (`python3` is 3.13, the committed locks
are for 3.11): `bash scripts/main-job.sh` in a trixie container, from a clean clone of this
repository, installing envbuild from PyPI as a newcomer would."""

from __future__ import annotations

import subprocess
from contextlib import closing
from pathlib import Path

import pytest
from containers import DockerEngine, docker_engine_fixture, trixie_image_fixture  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.network]   # envbuild's dependencies from PyPI

ROOT = Path(__file__).resolve().parent.parent
CA = "/etc/ssl/certs/ca-certificates.crt"


def test_main_job_on_debian_13(docker_engine: DockerEngine, trixie_image: str,
                               tmp_path: Path) -> None:
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(src)], check=True)
    lock = src / "recipes" / "webclient.lock"
    assert "# python: 3.11 (cpython)\n" in lock.read_text()   # what the repository carries
    with closing(docker_engine.client(timeout=1200)) as client:
        # the host's network (the engine has no bridge) and its CA bundle, for PyPI
        container = client.containers.create(
            trixie_image, ["bash", "-c", "cd /src && bash scripts/main-job.sh 2>&1"],
            network_mode="host", environment={"SSL_CERT_FILE": CA, "REQUESTS_CA_BUNDLE": CA},
            volumes={str(src): {"bind": "/src", "mode": "rw"}, CA: {"bind": CA, "mode": "ro"}})
        try:
            container.start()
            status = int(container.wait(timeout=1200)["StatusCode"])
            out = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
    assert status == 0, out[-3000:]
    assert "running in /root/.cache/envbuild/envs/webclient-" in out and "guard ok" in out
    assert "# python: 3.13 (cpython)\n" in lock.read_text()   # locked for the Python there
