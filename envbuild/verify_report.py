"""What verification finds: one `Difference` per way the runtime differs from the manifest,
gathered in a `Report`. Stdlib only; shared by the levels, the launcher and run records."""

from __future__ import annotations

import os
import stat

from .hashing import sha256_bytes
from .layout import staging_root_of

WRITABLE = stat.S_IWGRP | stat.S_IWOTH


class Difference:
    """One way the runtime differs from the manifest: `KIND: SUBJECT: expected X, found Y`."""

    __slots__ = ("kind", "subject", "expected", "found")

    def __init__(self, kind: str, subject: str, expected: object, found: object) -> None:
        self.kind, self.subject = kind, subject
        self.expected, self.found = str(expected), str(found)

    def line(self) -> str:
        return f"{self.kind}: {self.subject}: expected {self.expected}, found {self.found}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "expected": self.expected,
                "found": self.found}

    def __repr__(self) -> str:
        return f"Difference({self.line()!r})"


class Report:
    """The outcome of one verification; `quick` holds the quick sidecar's records, which the
    launcher applies (the environment contract, the root policy)."""

    __slots__ = ("env", "level", "manifest_digest", "differences", "quick")

    def __init__(self, env: str, level: str, digest: str | None, differences: list[Difference],
                 quick: dict[str, list[list[str]]]) -> None:
        self.env, self.level, self.manifest_digest = env, level, digest
        self.differences, self.quick = differences, quick

    @property
    def ok(self) -> bool:
        return not self.differences

    def to_json(self) -> dict[str, object]:
        return {"env": self.env, "level": self.level, "ok": self.ok,
                "manifest_digest": self.manifest_digest,
                "differences": [d.to_json() for d in self.differences]}


def bound_sidecar(env: str, manifest: bytes, rel: str, key: bytes,
                  diffs: list[Difference]) -> bytes | None:
    """A sidecar's bytes if the manifest records their digest under `key`; else a difference."""
    try:
        with open(os.path.join(env, rel), "rb") as fh:
            data = fh.read()
    except OSError:
        diffs.append(Difference("missing", rel, "present", "absent"))
        return None
    found = sha256_bytes(data)
    if key + found.encode() + b'"' not in manifest:
        diffs.append(Difference("manifest", rel, "the digest the manifest records", found))
        return None
    return data


def trusted_owners(env: str, uids: tuple[int, ...]) -> set[int]:
    """Root, you, and for a staged version the staging root's owner."""
    trusted = {0, os.geteuid(), *uids}
    root = staging_root_of(env)
    if root is not None:
        try:
            trusted.add(os.stat(root).st_uid)
        except OSError:
            pass
    return trusted


def owner_mode_diff(rel: str, st: os.stat_result, trusted: set[int],
                    diffs: list[Difference]) -> None:
    """A path owned by someone untrusted, or writable by group or others, is a difference;
    a symlink's own mode means nothing."""
    if stat.S_ISLNK(st.st_mode):
        return
    if st.st_uid not in trusted:
        diffs.append(Difference("permissions", rel, "owner root, you or the staging root's "
                                "owner", f"uid {st.st_uid}"))
    if st.st_mode & WRITABLE:
        diffs.append(Difference("permissions", rel, "not group/world-writable",
                                f"mode {stat.S_IMODE(st.st_mode):04o}"))
