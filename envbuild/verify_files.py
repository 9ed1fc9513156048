"""The files and full levels: the files sidecar reproduces the manifest's tree digest, every
path is as it records (size, mode, kind, link target), nothing is added; full also hashes
every file's content, in forked processes while the walk goes on. Stdlib only."""

from __future__ import annotations

import os
import stat

from .children import forking_unsafe
from .findwalk import Listing, Odd
from .hashing import sha256
from .layout import FILES, MANIFEST, META
from .sidecars import FILES_SCHEMA, parse_files_lines, read_files, scan, walk
from .verify import WRITABLE, Difference, is_bound, owner_mode_diff, read_sidecar


def check_files(env: str, manifest: bytes, content: bool, trusted: set[int],
                diffs: list[Difference], listing: Listing | None = None) -> None:
    """The files level (`content` False) or the full level; `listing` the files level's
    find if `start_listing` started it (closed here)."""
    if listing is not None and listing.since is not None:   # changed since a clean check
        from .filessince import check_changed

        if check_changed(listing, trusted, diffs):
            return
        listing = start_listing(env, trusted, pays=True)
    data = read_sidecar(env, FILES, diffs)
    if data is None:
        return
    bound = Bound(manifest, data, diffs)
    if not content:
        try:
            if _files_level(env, data, bound, trusted, diffs, listing):
                return
        except (ValueError, UnicodeDecodeError):
            pass   # reported below, by the check that parses every line
        finally:
            if listing is not None:
                listing.close()
    if not bound():
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


class Bound:
    """`is_bound` of the files sidecar, asked once: the files level asks it while its find
    runs, the other checks before they read a line."""

    def __init__(self, manifest: bytes, data: bytes, diffs: list[Difference]) -> None:
        self.manifest, self.data, self.diffs = manifest, data, diffs
        self.answer: bool | None = None

    def __call__(self) -> bool:
        if self.answer is None:
            self.answer = is_bound(self.manifest, FILES, b'"tree_digest":"', self.data,
                                   self.diffs)
        return self.answer


# ---- the files level, as the tree is walked, in two halves at once ---------------------------
# What costs is one lstat per path and Python's work around it. Where the host has GNU
# find, one find lists the env (`findwalk`) while this process reads the sidecar, and only
# the paths whose listing differs from their sidecar line are looked at here. Else each
# path's lstat is held against its sidecar line as text (kind, mode and size, as the build
# wrote them), only a line that differs parsed and compared in full; the tree is cut into
# subtrees shared out in two halves, a forked child walks one half, this process the other,
# and the child sends back only its differences.

_FANOUT = 64      # enough subtrees to share out evenly
_MIN_LINES = 4096  # below this, a find or a fork costs more than it saves


def start_listing(env: str, trusted: set[int], pays: bool | None = None) -> Listing | None:
    """The files level's find of the env's top entries and all below, started before
    anything else is read, where it pays (`pays`: what `find_pays` said, if asked already)."""
    if not (find_pays(env) if pays is None else pays):
        return None
    try:
        names = sorted(os.listdir(env))
    except OSError:
        return None
    return Listing.start(env, [n for n in names if n not in (MANIFEST, META)], trusted)


def find_pays(env: str) -> bool:
    """Whether the env's files sidecar is long enough for a find to pay."""
    try:
        return os.stat(os.path.join(env, FILES)).st_size >= _MIN_LINES * 100
    except OSError:
        return False


def _files_level(env: str, data: bytes, bound: Bound, trusted: set[int],
                 diffs: list[Difference], listing: Listing | None) -> bool:
    """The files level, by GNU find (`listing`, else started here) or with a forked helper
    where that pays; False (nothing done) where a path needs unescaping: the caller then
    parses every line."""
    if not data.startswith(FILES_SCHEMA.encode() + b"\n") or b"\\" in data:
        return False
    many = data.count(b"\n") > _MIN_LINES
    if many and listing is None:
        listing = start_listing(env, trusted)
    if many and listing is not None and _by_find(env, data, bound, listing, trusted, diffs):
        return True
    if not bound():
        return True
    lines = sidecar_lines(data.decode("utf-8"))
    upper, units, unreadable = _frontier(env)
    shares: list[list[tuple[str, int, int]]] = [[], []]
    weights = [0, 0]
    taken: list[tuple[int, int]] = []
    for unit in units:
        lo = _bisect(lines, unit + "/")
        hi = _bisect(lines, unit + "0")    # "0" follows "/": every path under unit/
        taken.append((lo, hi))
    for (lo, hi), unit in sorted(zip(taken, units), key=lambda t: t[0][0] - t[0][1]):
        lighter = 0 if weights[0] <= weights[1] else 1   # the biggest subtrees first
        shares[lighter].append((unit, lo, hi))
        weights[lighter] += hi - lo + 1
    for rel, why in unreadable:
        diffs.append(Difference("permissions", rel, "readable", f"unreadable ({why})"))
    _compare_tree(env, parse_files_lines(_outside(lines, taken), False), upper, trusted, diffs)
    if not many or forking_unsafe() or not _on_two(env, lines, shares, trusted, diffs):
        for share in shares:
            _check_share(env, lines, share, trusted, diffs)
    return True


def _by_find(env: str, data: bytes, bound: Bound, listing: Listing, trusted: set[int],
             diffs: list[Difference]) -> bool:
    """The files level by one GNU find over the whole env (`listing`), on a core of its
    own, while this process reads the sidecar on the other; False (nothing done, nothing
    reported) where the find failed: the walk in Python follows."""
    if not bound():
        return True
    text = data.decode("utf-8")
    lines = sidecar_lines(text)
    odd = listing.odd(lines, "\nl\t" in text)   # (the caller closes the listing)
    return odd is not None and compare_odd(env, lines, odd, trusted, diffs)


def sidecar_lines(text: str) -> list[str]:
    """The files sidecar's lines, without its header."""
    lines = text.split("\n")
    del lines[0]
    if lines and not lines[-1]:
        lines.pop()
    return lines


def compare_odd(env: str, lines: list[str], odd: Odd, trusted: set[int],
                 diffs: list[Difference]) -> bool:
    """`_compare_tree` of the paths find did not match, each with its lstat now; False
    (nothing done) where one cannot be read."""
    found: dict[str, os.stat_result] = {}
    for rel in odd.paths | odd.marked:
        try:
            found[rel] = os.lstat(os.path.join(env, rel))
        except FileNotFoundError:
            pass   # missing, or gone since find listed it
        except OSError:
            return False
    recorded_lines = []
    for rel in sorted(odd.paths):
        at = _bisect(lines, rel)
        if at < len(lines) and lines[at].rpartition("\t")[2] == rel:
            recorded_lines.append(lines[at])
    recorded = parse_files_lines(recorded_lines, False)
    extra: list[Difference] = []
    for rel in odd.paths - recorded.keys():
        if rel in found and not stat.S_ISDIR(found[rel].st_mode):
            extra.append(Difference("added", rel, "absent", "present"))
    _compare_recorded(env, recorded, found, diffs)
    for rel in odd.marked & found.keys():
        owner_mode_diff(rel, found[rel], trusted, extra)
    diffs.extend(sorted(extra, key=lambda d: d.subject))
    return True


def _on_two(env: str, lines: list[str], shares: list[list[tuple[str, int, int]]],
            trusted: set[int], diffs: list[Difference]) -> bool:
    """The two shares checked at once, the second by a forked child; False (nothing done)
    where the fork fails."""
    rfd, wfd = os.pipe()
    from .children import DefaultSigchld

    with DefaultSigchld(only_if_ignored=True):
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            return False
        if pid == 0:   # the child: its share, its differences, and out without cleanup
            status = 1
            try:
                os.close(rfd)
                mine: list[Difference] = []
                _check_share(env, lines, shares[1], trusted, mine)
                with open(wfd, "w", encoding="utf-8", errors="surrogateescape") as out:
                    out.write("".join(f"{d.kind}\t{d.subject}\t{d.expected}\t{d.found}\n"
                                      for d in mine) + "end\n")
                status = 0
            finally:
                os._exit(status)
        os.close(wfd)
        try:
            _check_share(env, lines, shares[0], trusted, diffs)
            with open(rfd, encoding="utf-8", errors="surrogateescape") as fh:
                report = fh.read().split("\n")
        finally:
            _, status = os.waitpid(pid, 0)
    if status != 0 or report[-2:] != ["end", ""]:   # not reported whole: do its share here
        _check_share(env, lines, shares[1], trusted, diffs)
    else:
        for line in report[:-2]:
            kind, subject, expected, found = line.split("\t", 3)
            diffs.append(Difference(kind, subject, expected, found))
    return True


def _bisect(lines: list[str], key: str) -> int:
    """The first of the (sorted) sidecar lines whose path is not below `key`."""
    lo, hi = 0, len(lines)
    while lo < hi:
        mid = (lo + hi) // 2
        if lines[mid].rpartition("\t")[2] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _frontier(env: str) -> tuple[dict[str, os.stat_result], list[str],
                                 list[tuple[str, str]]]:
    """The upper levels of the tree, walked here (their lstats), and the subtrees below
    them, at the first depth with _FANOUT of them or more: (upper, subtrees, unreadable)."""
    upper: dict[str, os.stat_result] = {}
    unreadable: list[tuple[str, str]] = []
    level = [""]
    for _depth in range(8):
        if len(level) >= _FANOUT:
            break
        below: list[str] = []
        for rel in level:
            try:
                with os.scandir(env + "/" + rel if rel else env) as it:
                    for entry in it:
                        if not rel and entry.name in (MANIFEST, META):
                            continue
                        sub = f"{rel}/{entry.name}" if rel else entry.name
                        st = entry.stat(follow_symlinks=False)
                        upper[sub] = st
                        if stat.S_ISDIR(st.st_mode):
                            below.append(sub)
            except OSError as exc:
                unreadable.append((rel or ".", exc.strerror or str(exc)))
        level = below
    return upper, sorted(level), unreadable


def _outside(lines: list[str], taken: list[tuple[int, int]]) -> list[str]:
    """The sidecar lines under no subtree: the upper levels', between the subtrees' ranges
    (which do not overlap)."""
    out: list[str] = []
    at = 0
    for lo, hi in sorted(taken):
        out += lines[at:lo]
        at = max(at, hi)
    return out + lines[at:]


def _check_share(env: str, lines: list[str], share: list[tuple[str, int, int]],
                 trusted: set[int], diffs: list[Difference]) -> None:
    for unit, lo, hi in share:
        _walk_compare(env, unit, {line.rpartition("\t")[2]: line for line in lines[lo:hi]},
                      trusted, diffs)


def _walk_compare(env: str, start: str, recorded: dict[str, str], trusted: set[int],
                  diffs: list[Difference]) -> None:
    """`_compare_tree` of the subtree `start`, from its sidecar lines (by path) as they
    are, each path compared as the walk finds it."""
    odd: dict[str, os.stat_result] = {}     # recorded paths whose line says otherwise
    extra: list[Difference] = []
    unreadable: list[tuple[str, str]] = []
    prefixes = _PREFIXES
    isdir, islnk = stat.S_ISDIR, stat.S_ISLNK
    for rel, st in scan(env, unreadable, start):
        mode = st.st_mode
        line = recorded.pop(rel, None)
        if line is None:
            if not isdir(mode):
                extra.append(Difference("added", rel, "absent", "present"))
        else:
            prefix = prefixes.get(mode)
            if prefix is None:
                prefix = prefixes[mode] = (f"f\t{stat.S_IMODE(mode):04o}\t"
                                           if stat.S_ISREG(mode) else "\0")
            if not line.startswith(f"{prefix}{st.st_size}\t"):
                odd[rel] = st
                recorded[rel] = line    # parsed below, with what is missing
        if st.st_uid not in trusted or (mode & WRITABLE and not islnk(mode)):
            owner_mode_diff(rel, st, trusted, extra)
    for rel, why in unreadable:
        diffs.append(Difference("permissions", rel, "readable", f"unreadable ({why})"))
    if recorded:   # odd or missing: the full comparison's words
        _compare_recorded(env, parse_files_lines([recorded[rel] for rel in sorted(recorded)],
                                                 False), odd, diffs)
    diffs.extend(sorted(extra, key=lambda d: d.subject))


# a regular file's st_mode -> how its sidecar line starts ("\0", matching no line, for
# other kinds: a symlink's target is read, not its lstat compared)
_PREFIXES: dict[int, str] = {}


def _compare_tree(env: str, recorded: dict[str, tuple[str, int, int, str]],
                  found: dict[str, os.stat_result], trusted: set[int],
                  diffs: list[Difference]) -> list[str]:
    """Every path as the files sidecar records it; the regular files that match in all but
    their content, which only the full level reads."""
    intact = _compare_recorded(env, recorded, found, diffs)
    extra: list[Difference] = []
    for rel, st in found.items():   # in the walk's order: what it finds is sorted below
        if rel not in recorded and not stat.S_ISDIR(st.st_mode):
            extra.append(Difference("added", rel, "absent", "present"))
        if st.st_uid not in trusted or (st.st_mode & WRITABLE and not stat.S_ISLNK(st.st_mode)):
            owner_mode_diff(rel, st, trusted, extra)
    diffs.extend(sorted(extra, key=lambda d: d.subject))
    return intact


def _compare_recorded(env: str, recorded: dict[str, tuple[str, int, int, str]],
                      found: dict[str, os.stat_result], diffs: list[Difference]) -> list[str]:
    """Each recorded path against its lstat in `found`: what differs; the regular files
    that match in all but their content."""
    intact: list[str] = []
    for rel, (kind, mode, size, digest) in recorded.items():   # in the sidecar's order
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
