"""Pushing an image to a registry over the HTTP API v2, with blobs envbuild compressed itself.

Each layer is gzip-compressed here with pinned settings (zlib level 6, default window and
memory level, header with mtime 0 and no file name) and cached in `cache_dir` under its
diff_id, so a re-push sends the same bytes and the manifest digest is the same from every
machine whose zlib produces the same deflate stream (zlib-ng or another deflate library may
not: the digest depends on the compressor library). The manifest is a Docker v2 schema 2
manifest serialized with sorted keys and no spaces; the registry's `Docker-Content-Digest`
must equal the sha256 of those bytes.

The requests, TLS and the auth handshake are `registryclient`'s; the credentials, read as
the docker CLI reads them, `registryauth`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin

from .errors import BuildError, InputError, RegistryError
from .fsutil import atomic_write_from
from .registryclient import Client, parse_reference

log = logging.getLogger(__name__)

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
GZIP_LEVEL = 6
_CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageParts:
    config: bytes                 # the image config JSON, as written
    layers: tuple[Path, ...]      # uncompressed layer tars, bottom first
    diff_ids: tuple[str, ...]     # "sha256:<hex>" of each uncompressed tar


@dataclass(frozen=True)
class PushResult:
    reference: str                # "REPO@sha256:<manifest digest>"
    manifest_digest: str
    blobs_sent: int               # blobs uploaded this time (not already in the registry)
    bytes_sent: int               # compressed bytes uploaded this time


@dataclass(frozen=True)
class Blob:
    path: Path | None             # None: the bytes are in `data`
    data: bytes
    digest: str
    size: int


# ---- compressed layers, cached ----------------------------------------------------------

def compressed_layer(layer: Path, diff_id: str, cache_dir: Path) -> Blob:
    """The gzip blob of `layer`, from `cache_dir` when a sound copy is there.

    The cache file is `<diff hex>-<blob hex>.tar.gz`; a copy whose sha256 is not the one in
    its name is removed and written again.
    """
    if not _DIGEST.fullmatch(diff_id):
        raise InputError(f"{layer}: diff_id {diff_id!r} is not sha256:<64 hex>")
    diff_hex = diff_id.split(":", 1)[1]
    for cached in sorted(cache_dir.glob(f"{diff_hex}-*.tar.gz")):
        blob_hex = cached.name[len(diff_hex) + 1:-len(".tar.gz")]
        if _file_sha256(cached) == blob_hex:
            return Blob(cached, b"", f"sha256:{blob_hex}", cached.stat().st_size)
        log.warning("cached blob %s does not match its digest: compressing again", cached)
        cached.unlink(missing_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)

    def fill(out: BinaryIO) -> str:
        raw, packed = hashlib.sha256(), hashlib.sha256()
        # wbits=31: zlib writes the gzip header (mtime 0, no name, its build's OS byte)
        deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31, 8, zlib.Z_DEFAULT_STRATEGY)
        with open(layer, "rb") as src:
            while chunk := src.read(_CHUNK):
                raw.update(chunk)
                data = deflate.compress(chunk)
                packed.update(data)
                out.write(data)
        data = deflate.flush()
        packed.update(data)
        out.write(data)
        if f"sha256:{raw.hexdigest()}" != diff_id:
            raise BuildError(f"{layer}: its sha256 is sha256:{raw.hexdigest()}, not the "
                             f"diff_id given, {diff_id}: the layer changed after it was written")
        return f"{diff_hex}-{packed.hexdigest()}.tar.gz"

    final = atomic_write_from(cache_dir, fill)
    blob_hex = final.name[len(diff_hex) + 1:-len(".tar.gz")]
    return Blob(final, b"", f"sha256:{blob_hex}", final.stat().st_size)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_bytes(config: Blob, layers: list[Blob]) -> bytes:
    """The Docker v2 schema 2 manifest, serialized the one way envbuild does."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": config.size, "digest": config.digest},
        "layers": [{"mediaType": LAYER_TYPE, "size": b.size, "digest": b.digest}
                   for b in layers],
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


# ---- the push ------------------------------------------------------------------------------

def _send_blob(client: Client, blob: Blob, label: str,
               progress: Callable[[str], None]) -> bool:
    """Upload `blob` unless the registry has it; True if it was sent."""
    head = client.send("HEAD", client.url(f"{client.ref.repo}/blobs/{blob.digest}"))
    if head.status_code == 200:
        progress(f"{label} already in the registry")
        return False
    client.check(head, (404,), f"looking up {label}")
    progress(f"pushing {label} ({_size(blob.size)})")
    start = client.send("POST", client.url(f"{client.ref.repo}/blobs/uploads/"))
    client.check(start, (202,), f"starting the upload of {label}")
    location = start.headers.get("Location")
    if not location:
        raise RegistryError(f"registry {client.ref.host} started an upload without a Location")
    target = urljoin(client.ref.base_url + "/", location)
    target += ("&" if "?" in target else "?") + f"digest={blob.digest}"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
    done = client.send("PUT", target, blob.path or blob.data, headers)
    client.check(done, (201,), f"the upload of {label}")
    return True


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def push(parts: ImageParts, tag: str, cache_dir: Path, ca: Path | None = None,
         progress: Callable[[str], None] = lambda _m: None) -> PushResult:
    """Push `parts` as `tag`; return `REPO@sha256:...` with what was sent."""
    ref = parse_reference(tag)
    if len(parts.layers) != len(parts.diff_ids):
        raise InputError(f"{len(parts.layers)} layers but {len(parts.diff_ids)} diff_ids")
    if ca is not None and not ca.is_file():
        raise InputError(f"--ca {ca}: no such file (a PEM file of CA certificates)")
    say = _logged(progress)
    total = len(parts.layers)
    blobs = []
    for i, (layer, diff_id) in enumerate(zip(parts.layers, parts.diff_ids), 1):
        say(f"compressing layer {i}/{total}")
        blobs.append(compressed_layer(layer, diff_id, cache_dir))
    config = Blob(None, parts.config, "sha256:" + hashlib.sha256(parts.config).hexdigest(),
                  len(parts.config))
    manifest = manifest_bytes(config, blobs)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    with Client(ref, ca) as client:
        client.check(client.send("GET", client.url("")), (200,), "the API v2 check")
        sent = [b for i, b in enumerate(blobs, 1)
                if _send_blob(client, b, f"layer {i}/{total}", say)]
        if _send_blob(client, config, "config", say):
            sent.append(config)
        say(f"pushing manifest {ref.name}:{ref.tag}")
        resp = client.send("PUT", client.url(f"{ref.repo}/manifests/{ref.tag}"), manifest,
                           {"Content-Type": MANIFEST_TYPE})
        client.check(resp, (201,), "the manifest")
    answered = resp.headers.get("Docker-Content-Digest", "(no Docker-Content-Digest header)")
    if answered != digest:
        raise RegistryError(f"registry {ref.host} stored the manifest of {ref.repo}:{ref.tag} "
                            f"as {answered}, not as its sha256 {digest}: it may have rewritten "
                            "the manifest; the pushed image cannot be pinned by this digest")
    return PushResult(f"{ref.name}@{digest}", digest, len(sent), sum(b.size for b in sent))


def _logged(progress: Callable[[str], None]) -> Callable[[str], None]:
    def say(message: str) -> None:
        log.info("%s", message)
        progress(message)
    return say
