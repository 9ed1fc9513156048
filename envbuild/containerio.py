"""Reading from an image through the engine, without losing bytes to its log copier.

A container that exits fast can lose the tail of its output when it is read back from the
engine's logs after `wait` (the engine stops copying after a short grace period). So a file
is read with `get_archive` from a container that is created and never started, and a
command's output is read from a stream attached before the container starts.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

from .errors import NotAnEnvError


def read_file(client: Any, image: str, path: str) -> bytes:
    """`path` inside `image`, read from a container that never runs."""
    import docker

    container = client.containers.create(image, command=["true"], network_mode="none")
    try:
        try:
            chunks, _stat = container.get_archive(path)
        except docker.errors.NotFound:
            raise NotAnEnvError(f"docker://{image}: expected {path} in it, found no such "
                                "file") from None
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            handle = archive.extractfile(member) if member is not None else None
            if handle is None:
                raise NotAnEnvError(f"docker://{image}: expected {path} to be a file in it, "
                                    "found something else")
            return handle.read()
    finally:
        container.remove(force=True)


def run_output(client: Any, image: str, command: list[str], *, entrypoint: str,
               user: str | None = None) -> tuple[int, bytes, bytes]:
    """Run `command` in `image` (no network); its status, stdout and stderr, whole."""
    container = client.containers.create(image, command=command, entrypoint=[entrypoint],
                                         network_mode="none", user=user or "")
    try:
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=True,
                                  demux=True)
        out, err = bytearray(), bytearray()
        try:
            container.start()
            for chunk_out, chunk_err in stream:
                out += chunk_out or b""
                err += chunk_err or b""
        finally:
            stream.close()
            stream._response.close()   # close() alone leaves the socket to the collector
        status = int(container.wait()["StatusCode"])
        return status, bytes(out), bytes(err)
    finally:
        container.remove(force=True)
