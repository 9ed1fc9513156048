"""`envbuild verify docker://IMAGE` and `envbuild run docker://IMAGE -- CMD`: the image's
own guard, run in a throwaway container with no network, reports as for a venv."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from .errors import InputError, NotAnEnvError
from .launch import Args

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


def _guard_args(opts: Args) -> list[str]:
    args = ["--level", opts.level]
    if opts.expect:
        args += ["--expect", opts.expect]
    return [*args, "--launch"] if opts.launch else args


def _image(image: str) -> tuple[Any, str]:
    """The engine's client and the image's guard (from its `io.envbuild.env` label)."""
    import docker

    from .image import engine

    if not image:
        raise InputError("docker://: expected an image name after it, found nothing")
    client = engine()
    try:
        found = client.images.get(image)
    except docker.errors.ImageNotFound:
        raise NotAnEnvError(f"docker://{image}: expected an image in the engine, found "
                            "none (envbuild never pulls)") from None
    env = ((found.attrs.get("Config") or {}).get("Labels") or {}).get("io.envbuild.env")
    if not env:
        raise NotAnEnvError(f"docker://{image}: expected an envbuild image (label "
                            "io.envbuild.env), found an image without it")
    return client, f"{env}/bin/envbuild-guard"


def verify_image(image: str, opts: Args) -> int:
    """The guard's verify-only entry in a container; its output and status, as they are."""
    client, guard = _image(image)
    command = ["--verify", *_guard_args(opts), *(["--json"] if opts.json else [])]
    return _run(client, image, guard, command)


def run_image(image: str, opts: Args) -> int:
    """CMD through the image's guard in a throwaway container; CMD's status, or the
    guard's 125/126/127. SIGINT, SIGTERM and SIGQUIT are passed on to the container."""
    if not opts.cmd:
        raise InputError("docker://: expected CMD after the image, found none")
    client, guard = _image(image)
    return _run(client, image, guard, [*_guard_args(opts), "--", *opts.cmd])


def _run(client: Any, image: str, entrypoint: str, command: list[str]) -> int:
    container = client.containers.create(image, command=command, entrypoint=[entrypoint],
                                         network_mode="none", stdin_open=False, tty=False)
    previous = {}
    try:
        for signum in _FORWARDED:
            previous[signum] = signal.signal(
                signum, lambda n, _f: container.kill(signal=signal.Signals(n).name))
        container.start()
        threads = [threading.Thread(target=_copy, args=(container, out), daemon=True)
                   for out in ("stdout", "stderr")]
        for thread in threads:
            thread.start()
        status = int(container.wait()["StatusCode"])
        for thread in threads:
            thread.join()
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        container.remove(force=True)


def _copy(container: Any, which: str) -> None:
    """One of the container's streams to ours, as it comes."""
    out = sys.stdout.buffer if which == "stdout" else sys.stderr.buffer
    for chunk in container.logs(stdout=which == "stdout", stderr=which == "stderr",
                                stream=True, follow=True):
        out.write(chunk)
        out.flush()
