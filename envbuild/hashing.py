"""sha256 of bytes and files, as envbuild writes digests (`sha256:<hex>`). Stdlib only.

`_sha256` for small inputs on the launch path (hashlib costs ~11 ms to import; the C module
it wraps well under one); hashlib (OpenSSL, about 3x faster on large files) wherever whole
files are hashed, imported there.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from io import FileIO

try:
    from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - Python 3.12+ renamed it
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,unused-ignore]

__all__ = ["sha256", "sha256_bytes", "file_digest", "hash_file"]


def sha256_bytes(data: bytes) -> str:
    if len(data) > 1 << 20:   # OpenSSL's (about 3 ms to load) pays off past a megabyte
        try:
            import _hashlib  # type: ignore[import-not-found,unused-ignore]

            return "sha256:" + str(_hashlib.openssl_sha256(data).hexdigest())
        except (ImportError, AttributeError):
            pass
    return "sha256:" + str(sha256(data).hexdigest())


def file_digest(path: str) -> str:
    """`sha256:<hex>` of a file, through OpenSSL."""
    with open(path, "rb", buffering=0) as fh:
        return _digest_of(fh)


def _digest_of(fh: FileIO) -> str:
    import hashlib

    if hasattr(hashlib, "file_digest"):
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
    h = hashlib.sha256()  # Python < 3.11
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def hash_file(path: str, size: int) -> str:
    """sha256 hex of a regular file (size+1 bytes read: a file that grew still differs),
    never following a symlink or blocking on a fifo; '!' and the reason otherwise."""
    import hashlib

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"!{exc.strerror}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "!not a regular file"
        if size <= 1 << 22:
            return hashlib.sha256(os.read(fd, size + 1)).hexdigest()
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            return _digest_of(fh)[7:]
    except OSError as exc:
        return f"!{exc.strerror}"
    finally:
        os.close(fd)


def record_digest(data: bytes) -> str:
    """A wheel RECORD row's hash of `data`: `sha256=` and the unpadded urlsafe base64."""
    import base64
    import hashlib

    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()
