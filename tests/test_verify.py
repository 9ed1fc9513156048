"""verify against tampered copies of the session-built env.

Each test copies the env to another path, checks the untouched copy (quick, files, full, and
its console script), tampers with it the way an accident or an attacker would, then checks
that `envbuild verify` lists every difference once, as `KIND: SUBJECT: expected X, found Y`
and in `--json`, at the level that must catch it, and that `envbuild run` refuses to start
anything (exit 125, CMD never runs, the difference on stderr).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import Built, cli, copy_env, envbuild, make_writable, write_recipe
from pkgindex import LocalIndex

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
MANIFEST = "envbuild-manifest.json"
QUICK = ".envbuild/quick"
FILES = ".envbuild/files"
OTHER_PYTHON = Path("/usr/bin/python3.11")


class Has:
    """Equal to any string containing every part: for wording the contract leaves open."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and all(part in other for part in self.parts)

    def __repr__(self) -> str:
        return f"Has{self.parts!r}"


ANY = Has()
Want = tuple[str, str, "str | Has", "str | Has"]   # kind, subject, expected, found


# ---- helpers ---------------------------------------------------------------------------


def tampered_copy(built: Built, tmp_path: Path) -> Path:
    """A copy of the built env at another path, checked untouched, then open for tampering.

    Call `freeze` when done: it restores the build's read-only directory modes.
    """
    env = copy_env(built.env, tmp_path / "env")
    for level in ("quick", "files", "full"):
        res = cli("verify", env, "--level", level, "--expect", built.digest)
        assert res.exit_code == 0, f"untouched copy at {level}: {res.stdout}{res.stderr}"
    alpha = subprocess.run([str(env / "bin" / "alpha")], capture_output=True, text=True,
                           timeout=60)
    assert (alpha.returncode, alpha.stdout) == (0, "alpha 2.0\n"), alpha.stderr
    make_writable(env)
    return env


def freeze(env: Path) -> None:
    """Every directory back to 0555, as the build leaves it (files keep their modes)."""
    for dirpath, dirnames, _ in os.walk(env):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o555)
    os.chmod(env, 0o555)


def rewrite(path: Path, data: bytes) -> None:
    """Replace a read-only file's bytes in place, keeping its mode."""
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(mode | stat.S_IWUSR)
    path.write_bytes(data)
    path.chmod(mode)


def add_file(path: Path, data: bytes, mode: int = 0o444) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def canonical(manifest: dict[str, object]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def absolute_python_link(env: Path) -> Path:
    """The one bin/python* symlink that points outside the env (python -> python3.11 -> /...)."""
    links = [p for p in sorted((env / "bin").glob("python*"))
             if p.is_symlink() and os.path.isabs(os.readlink(p))]
    assert len(links) == 1, f"expected one absolute bin/python* symlink, found {links}"
    return links[0]


def swap_interpreter(env: Path) -> None:
    assert OTHER_PYTHON.is_file(), f"the test needs another interpreter at {OTHER_PYTHON}"
    link = absolute_python_link(env)
    link.unlink()
    link.symlink_to(OTHER_PYTHON)


def line(diff: dict[str, str]) -> str:
    return f"{diff['kind']}: {diff['subject']}: expected {diff['expected']}, found {diff['found']}"


def differences(env: Path, level: str, expect: str | None = None) -> list[dict[str, str]]:
    """verify's differences, checked to be the same in text and in --json, exit 1 in both."""
    args = ["verify", str(env), "--level", level, *(["--expect", expect] if expect else [])]
    text, as_json = cli(*args), cli(*args, "--json")
    assert text.exit_code == 1, (f"verify --level {level}: expected exit 1, found "
                                 f"{text.exit_code}: {text.stdout}{text.stderr}")
    assert as_json.exit_code == 1, as_json.stdout + as_json.stderr
    found: list[dict[str, str]] = json.loads(as_json.stdout)["differences"]
    for diff in found:
        assert set(diff) == {"kind", "subject", "expected", "found"}, diff
    assert sorted(text.stdout.splitlines()) == sorted(map(line, found))
    return found


def assert_differences(env: Path, level: str, want: list[Want], expect: str | None = None,
                       exact: bool = True) -> list[str]:
    """Each wanted difference listed once; with `exact`, nothing else. Returns the lines."""
    found = differences(env, level, expect)
    rest = [(d["kind"], d["subject"], d["expected"], d["found"]) for d in found]
    for item in want:
        assert item in rest, f"--level {level}: {item} not among {rest}"
        rest.remove(item)
    if exact:
        assert not rest, f"--level {level}: unexpected or repeated differences: {rest}"
    return [line(d) for d in found]


def assert_listed_once(env: Path, level: str, lines: list[str]) -> None:
    """A difference a lower level finds is still listed, once, at a higher one."""
    found = [line(d) for d in differences(env, level)]
    for text in lines:
        assert found.count(text) == 1, (f"--level {level}: {text!r} listed "
                                         f"{found.count(text)} times: {found}")


def assert_run_refused(env: Path, tmp_path: Path, lines: list[str], *options: str) -> None:
    """`envbuild run` exits 125, never starts CMD, and says why on stderr."""
    marker = tmp_path / "MARKER"
    res = envbuild("run", env, *options, "--", "sh", "-c", f"touch {shlex.quote(str(marker))}")
    assert res.returncode == 125, f"expected 125, found {res.returncode}: {res.stderr}"
    assert not marker.exists(), "CMD started in an env that differs from its manifest"
    for text in lines:
        assert text in res.stderr, f"{text!r} not on stderr: {res.stderr}"


# ---- files level and full ----------------------------------------------------------------


def test_same_size_byte_change_is_caught_only_by_full(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    rel = f"{SITE}/alpha/__init__.py"
    data = (env / rel).read_bytes()
    changed = data.replace(b'"2.0"', b'"2.1"')
    assert changed != data and len(changed) == len(data)
    rewrite(env / rel, changed)
    freeze(env)

    for level in ("quick", "files"):
        res = cli("verify", env, "--level", level)
        assert res.exit_code == 0, f"{level} hashes no content, found: {res.stdout}"
    lines = assert_differences(env, "full", [
        ("modified", rel, sha256_of(built.env / rel), sha256_of(env / rel))])
    assert_run_refused(env, tmp_path, lines, "--level", "full")


def test_grown_file(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    rel = f"{SITE}/delta.py"
    before = (env / rel).read_bytes()
    rewrite(env / rel, before + b"# grown\n")
    freeze(env)

    lines = assert_differences(env, "files", [
        ("modified", rel, Has(str(len(before))), Has(str(len(before) + 8)))])
    assert_run_refused(env, tmp_path, lines, "--level", "files")


def test_file_replaced_by_a_fifo_or_a_symlink(built: Built, tmp_path: Path) -> None:
    """Full verify reads files in other processes: a fifo must not block it, and a symlink
    must not be followed out of the env."""
    env = tampered_copy(built, tmp_path)
    fifo, link = f"{SITE}/delta.py", f"{SITE}/gamma.py"
    (env / fifo).unlink()
    os.mkfifo(env / fifo, 0o644)
    (env / link).unlink()
    (env / link).symlink_to("/etc/hostname")
    freeze(env)

    want: list[Want] = [("modified", fifo, "a regular file", "another kind of file"),
                        ("modified", link, "a regular file", "another kind of file")]
    res = subprocess.run([sys.executable, "-m", "envbuild", "verify", env, "--level", "full"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    lines = assert_differences(env, "full", want)
    assert_run_refused(env, tmp_path, lines, "--level", "full")


def test_removed_file(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    rel = f"{SITE}/gamma.py"
    (env / rel).unlink()
    freeze(env)

    lines = assert_differences(env, "files", [("missing", rel, ANY, ANY)])
    assert_run_refused(env, tmp_path, lines, "--level", "files")


def test_added_file(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    rel = f"{SITE}/added.py"
    add_file(env / rel, b"x = 1\n")
    freeze(env)

    lines = assert_differences(env, "files", [("added", rel, ANY, ANY)])
    assert_run_refused(env, tmp_path, lines, "--level", "files")


def test_world_writable_file(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    rel = f"{SITE}/delta.py"
    freeze(env)
    (env / rel).chmod(0o646)

    lines = assert_differences(env, "files", [("permissions", rel, ANY, Has("0646"))])
    assert_run_refused(env, tmp_path, lines, "--level", "files")


# ---- quick level -------------------------------------------------------------------------


def test_planted_pth(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    rel = f"{SITE}/zz-planted.pth"
    add_file(env / rel, b"import os\n")
    freeze(env)

    lines = assert_differences(env, "quick", [("added", rel, ANY, ANY)])
    assert_run_refused(env, tmp_path, lines)
    assert_listed_once(env, "full", lines)


def test_dist_info_renamed_to_another_version(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    (env / SITE / "alpha-2.0.dist-info").rename(env / SITE / "alpha-1.0.dist-info")
    freeze(env)

    lines = assert_differences(env, "quick", [("version", "alpha", "2.0", "1.0")])
    assert lines == ["version: alpha: expected 2.0, found 1.0"]
    assert_run_refused(env, tmp_path, lines)
    assert_listed_once(env, "full", lines)


def test_extra_distribution(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    extra = env / SITE / "zeta-1.0.dist-info"
    extra.mkdir()
    add_file(extra / "METADATA", b"Metadata-Version: 2.1\nName: zeta\nVersion: 1.0\n")
    freeze(env)

    lines = assert_differences(env, "quick", [("added", f"{SITE}/zeta-1.0.dist-info", ANY, ANY)])
    assert_run_refused(env, tmp_path, lines)
    assert_listed_once(env, "full", lines)


def test_world_writable_site_packages(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    freeze(env)
    (env / SITE).chmod(0o757)

    lines = assert_differences(env, "quick", [("permissions", SITE, ANY, Has("0757"))])
    assert_run_refused(env, tmp_path, lines)
    assert_listed_once(env, "full", lines)


@pytest.mark.parametrize("rel", [
    "lib/envbuild-launch/envbuild/verify.py",      # the code the guard imports to check
    "lib/envbuild-launch/envbuild",
    "bin/envbuild-guard",
    "pyvenv.cfg",                                  # read when the interpreter starts
    "lib",
])
def test_writable_launch_code_is_caught_at_quick(built: Built, tmp_path: Path,
                                                 rel: str) -> None:
    """Whoever can write what runs before the check could make it say anything: these
    are refused at the launch level, by `run` and by the guard."""
    env = tampered_copy(built, tmp_path)
    freeze(env)
    mode = stat.S_IMODE((env / rel).stat().st_mode) | 0o002
    (env / rel).chmod(mode)

    lines = assert_differences(env, "quick", [("permissions", rel, ANY, Has(f"{mode:04o}"))])
    assert_run_refused(env, tmp_path, lines)
    marker = tmp_path / "GUARD-MARKER"
    res = subprocess.run([env / "bin" / "envbuild-guard", "--", "touch", marker],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 125 and not marker.exists(), res.stderr
    assert lines[0] in res.stderr
    assert_listed_once(env, "full", lines)


def test_interpreter_swapped(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    swap_interpreter(env)
    freeze(env)

    want = os.path.realpath(built.env / "bin" / "python")
    lines = assert_differences(env, "quick", [
        ("interpreter", "bin/python", want, os.path.realpath(OTHER_PYTHON))])
    assert_run_refused(env, tmp_path, lines)
    assert_listed_once(env, "full", lines)


def private_shared_python(root: Path) -> tuple[Path, Path]:
    """A copy of the test interpreter's `--enable-shared` install that loads its own copy of
    libpython (RUNPATH set with patchelf; the stdlib by symlink): (python, libpython)."""
    assert sysconfig.get_config_var("Py_ENABLE_SHARED"), (
        f"the test needs a Python built with --enable-shared, not {sys.executable}")
    assert shutil.which("patchelf"), "the test needs patchelf (tests/run installs it)"
    with open("/proc/self/maps") as fh:
        loaded = {line.split(None, 5)[5].strip() for line in fh if len(line.split(None, 5)) == 6}
    lib = next(Path(p) for p in loaded if Path(p).name.startswith("libpython"))
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    python = root / "bin" / ver
    shutil.copy2(os.path.realpath(sys.executable), python)
    shutil.copy2(lib, root / "lib" / lib.name)
    (root / "lib" / ver).symlink_to(sysconfig.get_path("stdlib"))
    subprocess.run(["patchelf", "--set-rpath", str(root / "lib"), str(python)], check=True)
    return python, root / "lib" / lib.name


def build_with(python: Path, index: LocalIndex, tmp_path: Path) -> Path:
    """A small env built for `python`: its path."""
    recipe = write_recipe(tmp_path / "recipe", index, ["alpha"])
    assert cli("lock", recipe).exit_code == 0
    res = envbuild("build", recipe, "--store", tmp_path / "store", "--python", python)
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_libpython_swapped(index: LocalIndex, tmp_path: Path) -> None:
    """A shared build's binary is a small stub: the interpreter is its libpython, so
    swapping that library is an interpreter difference at the quick level."""
    python, libpython = private_shared_python(tmp_path / "py")
    env = build_with(python, index, tmp_path)
    recorded = json.loads((env / MANIFEST).read_bytes())["interpreter"]["libpython"]
    assert recorded == {"path": str(libpython), "sha256": sha256_of(libpython)}
    assert cli("verify", env).exit_code == 0

    # the same bytes elsewhere, put first by LD_LIBRARY_PATH: the guard's interpreter sees
    # which one it loaded (CMD would inherit the variable and load it too)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(libpython, elsewhere / libpython.name)
    marker = tmp_path / "GUARD-MARKER"
    res = subprocess.run([env / "bin" / "envbuild-guard", "--", "touch", marker],
                         capture_output=True, text=True,
                         env={**os.environ, "LD_LIBRARY_PATH": str(elsewhere)})
    assert res.returncode == 125 and not marker.exists(), res.stderr
    assert (f"interpreter: libpython (as loaded): expected {libpython}, found "
            f"{elsewhere / libpython.name}") in res.stderr

    other = libpython.with_name("other.so")
    shutil.copy2(libpython, other)
    with open(other, "ab") as fh:
        fh.write(b"\0" * 16)     # still loads: the interpreter runs, but it is not the one
    other.replace(libpython)
    lines = assert_differences(env, "quick", [
        ("interpreter", str(libpython), recorded["sha256"], sha256_of(libpython))])
    assert_run_refused(env, tmp_path, lines)
    res = subprocess.run([env / "bin" / "envbuild-guard", "--", "touch", marker],
                         capture_output=True, text=True)
    assert res.returncode == 125 and not marker.exists(), res.stderr
    assert lines[0] in res.stderr

    libpython.unlink()        # the interpreter cannot start at all: the guard says so
    lines = assert_differences(env, "quick", [
        ("interpreter", str(libpython), recorded["sha256"], "missing")])
    res = subprocess.run([env / "bin" / "envbuild-guard", "--", "touch", marker],
                         capture_output=True, text=True)
    assert res.returncode == 125 and not marker.exists(), res.stderr
    assert lines[0] in res.stderr


@pytest.mark.slow
def test_interpreter_stdlib_gone(index: LocalIndex, tmp_path: Path) -> None:
    """Without its stdlib an interpreter stops before running any code (a fatal error,
    status 1): the guard must still refuse with 125 and say why."""
    python, _ = private_shared_python(tmp_path / "py")
    env = build_with(python, index, tmp_path)
    stdlib = tmp_path / "py" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib.unlink()     # the private install's stdlib is a symlink
    lines = assert_differences(env, "quick", [
        ("interpreter", str(stdlib / "os.py"), "present", "missing")])
    marker = tmp_path / "GUARD-MARKER"
    res = subprocess.run([env / "bin" / "envbuild-guard", "--", "touch", marker],
                         capture_output=True, text=True)
    assert res.returncode == 125 and not marker.exists(), res.stderr
    assert lines[0] in res.stderr


FULL_IN_PROCESS = """
import sys, threading, time
from envbuild.verify import verify
if sys.argv[2] == "threaded":
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
sys.exit(0 if verify(sys.argv[1], "full").ok else 1)
"""


@pytest.mark.parametrize("mode,forks", [("plain", True), ("threaded", False)])
def test_full_verify_forks_only_without_other_threads(built: Built, tmp_path: Path,
                                                      mode: str, forks: bool) -> None:
    """Full verify hashes in forked children, unless other threads run: a fork copies
    locks that those threads may hold (OpenSSL's among them) into a child that would wait
    on them forever. Processes created are seen with strace (forks are clones without
    CLONE_THREAD)."""
    trace = tmp_path / "trace"
    res = subprocess.run(["strace", "-f", "-qq", "-e", "trace=clone,clone3,fork,vfork",
                          "-o", trace, sys.executable, "-c", FULL_IN_PROCESS, built.env, mode],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    calls = [ln for ln in trace.read_text().splitlines()
             if "clone" in ln or "fork" in ln]
    processes = [ln for ln in calls if "CLONE_THREAD" not in ln and "= " in ln]
    assert bool(processes) == forks, calls


# ---- the manifest and its sidecars ---------------------------------------------------------


def test_rewritten_manifest_is_caught_with_expect(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    manifest = json.loads((env / MANIFEST).read_bytes())
    manifest["environment"]["set"]["OMP_NUM_THREADS"] = "64"
    rewrite(env / MANIFEST, canonical(manifest))
    freeze(env)

    lines = assert_differences(env, "quick", [
        ("manifest", MANIFEST, built.digest, sha256_of(env / MANIFEST))], expect=built.digest)
    assert_run_refused(env, tmp_path, lines, "--expect", built.digest)


def test_rewritten_manifest_with_stale_sidecar_digests(built: Built, tmp_path: Path) -> None:
    """Without --expect: a manifest whose sidecar digests no longer match is a difference."""
    env = tampered_copy(built, tmp_path)
    manifest = json.loads((env / MANIFEST).read_bytes())
    manifest["sidecars"]["quick"] = "sha256:" + "0" * 64
    manifest["tree_digest"] = "sha256:" + "1" * 64
    rewrite(env / MANIFEST, canonical(manifest))
    freeze(env)

    lines = assert_differences(env, "quick", [
        ("manifest", QUICK, ANY, sha256_of(env / QUICK))])
    assert_differences(env, "files", [
        ("manifest", QUICK, ANY, sha256_of(env / QUICK)),
        ("manifest", FILES, ANY, sha256_of(env / FILES))])
    assert_run_refused(env, tmp_path, lines)


def test_edited_quick_sidecar(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    text = (env / QUICK).read_text()
    assert "set\tOMP_NUM_THREADS\t1\n" in text
    rewrite(env / QUICK, text.replace("set\tOMP_NUM_THREADS\t1\n",
                                      "set\tOMP_NUM_THREADS\t64\n").encode())
    freeze(env)

    lines = assert_differences(env, "quick", [("manifest", QUICK, ANY, sha256_of(env / QUICK))])
    assert_run_refused(env, tmp_path, lines)


def test_files_sidecar_edited_to_match_a_change(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    rel = f"{SITE}/delta.py"
    before = (env / rel).read_bytes()
    after = before + b"# grown\n"
    rewrite(env / rel, after)
    old = f"\t{len(before)}\t{hashlib.sha256(before).hexdigest()}\t{rel}\n"
    new = f"\t{len(after)}\t{hashlib.sha256(after).hexdigest()}\t{rel}\n"
    sidecar = (env / FILES).read_text()
    assert old in sidecar
    rewrite(env / FILES, sidecar.replace(old, new).encode())
    freeze(env)

    for level in ("files", "full"):
        lines = assert_differences(env, level, [("manifest", FILES, ANY, sha256_of(env / FILES))],
                                   exact=False)
    assert_run_refused(env, tmp_path, lines, "--level", "files")


def test_garbled_files_sidecar_bound_by_a_rewritten_manifest(built: Built,
                                                             tmp_path: Path) -> None:
    """Without --expect, a manifest rewritten to bind a garbled sidecar is a difference,
    never a crash (which `run` would turn into a status CMD could have returned)."""
    env = tampered_copy(built, tmp_path)
    garbled = b"not a files sidecar\n"
    manifest = json.loads((env / MANIFEST).read_bytes())
    manifest["tree_digest"] = "sha256:" + hashlib.sha256(garbled).hexdigest()
    rewrite(env / FILES, garbled)
    rewrite(env / MANIFEST, canonical(manifest))
    freeze(env)

    assert cli("verify", env).exit_code == 0, "quick does not read the files sidecar"
    for level in ("files", "full"):
        lines = assert_differences(env, level, [("manifest", FILES, "envbuild.files/1",
                                                 Has("unreadable"))])
    assert_run_refused(env, tmp_path, lines, "--level", "files")


# ---- several at once ---------------------------------------------------------------------


def test_several_quick_tampers_each_listed(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    add_file(env / SITE / "zz-planted.pth", b"import os\n")
    (env / SITE / "alpha-2.0.dist-info").rename(env / SITE / "alpha-1.0.dist-info")
    (env / SITE / "zeta-1.0.dist-info").mkdir()
    swap_interpreter(env)
    freeze(env)
    (env / SITE).chmod(0o757)

    lines = assert_differences(env, "quick", [
        ("added", f"{SITE}/zz-planted.pth", ANY, ANY),
        ("version", "alpha", "2.0", "1.0"),
        ("added", f"{SITE}/zeta-1.0.dist-info", ANY, ANY),
        ("permissions", SITE, ANY, Has("0757")),
        ("interpreter", "bin/python", os.path.realpath(built.env / "bin" / "python"),
         os.path.realpath(OTHER_PYTHON)),
    ])
    assert len(lines) == 5
    assert_run_refused(env, tmp_path, lines)


def test_several_file_tampers_each_listed(built: Built, tmp_path: Path) -> None:
    env = tampered_copy(built, tmp_path)
    alpha, delta, gamma = f"{SITE}/alpha/__init__.py", f"{SITE}/delta.py", f"{SITE}/gamma.py"
    beta = f"{SITE}/beta/__init__.py"
    rewrite(env / alpha, (env / alpha).read_bytes().replace(b'"2.0"', b'"2.1"'))
    delta_size = len((env / delta).read_bytes())
    rewrite(env / delta, (env / delta).read_bytes() + b"# grown\n")
    (env / gamma).unlink()
    add_file(env / SITE / "added.py", b"x = 1\n")
    freeze(env)
    (env / beta).chmod(0o646)

    lines = assert_differences(env, "full", [
        ("modified", alpha, sha256_of(built.env / alpha), sha256_of(env / alpha)),
        ("modified", delta, Has(str(delta_size)), Has(str(delta_size + 8))),
        ("missing", gamma, ANY, ANY),
        ("added", f"{SITE}/added.py", ANY, ANY),
        ("permissions", beta, ANY, Has("0646")),
    ])
    assert len(lines) == 5
    assert_run_refused(env, tmp_path, lines, "--level", "full")


# ---- not an env ----------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["empty dir", "a file", "missing"])
def test_not_an_env(tmp_path: Path, what: str) -> None:
    path = tmp_path / "not-an-env"
    if what == "empty dir":
        path.mkdir()
    elif what == "a file":
        path.write_text("hello\n")
    for args in (("verify", path), ("verify", path, "--json"),
                 ("verify", path, "--level", "full")):
        res = cli(*args)
        assert res.exit_code == 2, f"{args}: expected 2, found {res.exit_code}: {res.stdout}"
        assert str(path) in res.stderr, res.stderr
        assert MANIFEST in res.stderr, f"the message should say what was expected: {res.stderr}"

    marker = tmp_path / "MARKER"
    run = envbuild("run", path, "--", "sh", "-c", f"touch {shlex.quote(str(marker))}")
    assert run.returncode == 125, run.stderr
    assert not marker.exists()
    assert str(path) in run.stderr
