"""The files and full levels: the files sidecar reproduces the manifest's tree digest, every
path is as it records (size, mode, kind, link target), nothing is added; full also hashes
every file's content, in forked processes while the walk goes on. Stdlib only."""

from __future__ import annotations

import os
import stat

from .hashing import sha256
from .layout import FILES
from .sidecars import FILES_SCHEMA, read_files, walk
from .verify import WRITABLE, Difference, bound_sidecar, owner_mode_diff


def check_files(env: str, manifest: bytes, content: bool, trusted: set[int],
                diffs: list[Difference]) -> None:
    data = bound_sidecar(env, manifest, FILES, b'"tree_digest":"', diffs)
    if data is None:
        return
    try:
        recorded = read_files(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        diffs.append(Difference("manifest", FILES, FILES_SCHEMA, f"unreadable ({exc})"))
        return
    hasher = None
    if content:   # hashed by other processes while this one walks the tree and compares
        from .hashpool import Hasher

        hasher = Hasher(env, [(rel, size) for rel, (kind, _, size, _)
                              in sorted(recorded.items()) if kind == "f"])
    try:
        unreadable: list[tuple[str, str]] = []
        found = walk(env, unreadable)
        for rel, why in unreadable:
            diffs.append(Difference("permissions", rel, "readable", f"unreadable ({why})"))
        intact = _compare_tree(env, recorded, found, trusted, diffs)
        if hasher is None:
            return
        hashes = hasher.results()
    finally:
        if hasher is not None:
            hasher.close(kill=True)   # on an error: no child outlives the check
    for rel in intact:
        want, got = recorded[rel][3], hashes[rel]
        if got.startswith("!"):
            diffs.append(Difference("modified", rel, f"sha256:{want}",
                                    f"unreadable ({got[1:]})"))
        elif got != want:
            diffs.append(Difference("modified", rel, f"sha256:{want}", f"sha256:{got}"))


def _compare_tree(env: str, recorded: dict[str, tuple[str, int, int, str]],
                  found: dict[str, os.stat_result], trusted: set[int],
                  diffs: list[Difference]) -> list[str]:
    """Every path as the files sidecar records it; the regular files that match in all but
    their content, which only the full level reads."""
    intact: list[str] = []
    for rel, (kind, mode, size, digest) in sorted(recorded.items()):
        st = found.get(rel)
        if st is None:
            diffs.append(Difference("missing", rel, "present", "absent"))
        elif kind == "l":
            _compare_link(env, rel, st, digest, diffs)
        elif not stat.S_ISREG(st.st_mode):
            diffs.append(Difference("modified", rel, "a regular file", "another kind of file"))
        elif st.st_size != size:
            diffs.append(Difference("modified", rel, f"{size} bytes", f"{st.st_size} bytes"))
        else:
            if stat.S_IMODE(st.st_mode) != mode and not stat.S_IMODE(st.st_mode) & WRITABLE:
                diffs.append(Difference("permissions", rel, f"mode {mode:04o}",
                                        f"mode {stat.S_IMODE(st.st_mode):04o}"))
            intact.append(rel)
    for rel in sorted(found):
        st = found[rel]
        if rel not in recorded and not stat.S_ISDIR(st.st_mode):
            diffs.append(Difference("added", rel, "absent", "present"))
        owner_mode_diff(rel, st, trusted, diffs)
    return intact


def _compare_link(env: str, rel: str, st: os.stat_result, digest: str,
                  diffs: list[Difference]) -> None:
    if not stat.S_ISLNK(st.st_mode):
        diffs.append(Difference("modified", rel, "a symlink", "not a symlink"))
        return
    try:
        target = os.readlink(os.path.join(env, rel))
    except OSError as exc:   # replaced since the walk
        diffs.append(Difference("modified", rel, "a symlink", exc.strerror or "gone"))
        return
    if sha256(os.fsencode(target)).hexdigest() != digest:
        diffs.append(Difference("modified", rel, "the recorded link target",
                                f"a link to {target}"))
