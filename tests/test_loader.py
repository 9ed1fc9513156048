"""loader: host libraries resolved as the dynamic loader resolves them (held equal to
`ld.so --list` on real files), their symbol versions checked, and the per-host answer kept
only while everything that decides it is unchanged. Real gcc-built libraries, the real
loader, the real ldconfig; no mocks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment

from envbuild import loader
from envbuild.elfread import read_dynamic, read_ld_so_cache
from envbuild.host import host_glibc
from envbuild.hostreq import host_records, scan
from envbuild.layout import host_cache_dir
from envbuild.loader import (
    Gap,
    Needs,
    check,
    host_gaps,
    loader_platform,
    needs_from_records,
    resolve,
)
from envbuild.sidecars import format_quick, read_quick

REPO = Path(__file__).resolve().parents[1]
MULTIARCH = loader.default_dirs()[0]


def _interpreter() -> str:
    with open("/bin/sh", "rb") as fh:
        for seg in ELFFile(fh).iter_segments():
            if isinstance(seg, InterpSegment):
                return str(seg.get_interp_name())
    raise AssertionError("/bin/sh has no PT_INTERP")


LD_SO = _interpreter()


def _cc(cwd: Path, *args: str, cc: str = "gcc") -> None:
    proc = subprocess.run([cc, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _version_script(path: Path, names: list[str]) -> str:
    """A version script defining `names`, each with one symbol; returns C defining them."""
    nodes = [f"{n} {{ global: eb_sym_{i}; {'local: *; ' if i == 0 else ''}}};"
             for i, n in enumerate(names)]
    path.write_text("\n".join(nodes) + "\n")
    return "".join(f"int eb_sym_{i}(void) {{ return {i}; }}\n" for i in range(len(names)))


@dataclass
class Built:
    root: Path
    new: Path        # libebtest.so.1 defining EBTEST_1.0 and EBTEST_2.0
    old: Path        # the same soname defining EBTEST_1.0 only
    ext: Path        # needs EBTEST_2.0 from libebtest.so.1, and GLIBC_2.25 (getrandom)
    cxx: Path        # C++: needs GLIBCXX_3.4.x from libstdc++.so.6
    fake_cxx: Path   # libstdc++.so.6 defining GLIBCXX_3.4 .. GLIBCXX_3.4.28 (and CXXABI_*)
    fake_libc: Path  # libc.so.6 defining GLIBC_2.2.5, 2.4, 2.17 and 2.24
    m32_libm: Path   # a 32-bit libm.so.6: the loader skips it (another ELF class)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    d = tmp_path_factory.mktemp("built")
    for sub in ("new", "old", "fakecxx", "fakelibc", "m32"):
        (d / sub).mkdir()
    (d / "new.map").write_text("EBTEST_1.0 { global: one; local: *; };\n"
                               "EBTEST_2.0 { global: two; } EBTEST_1.0;\n")
    (d / "old.map").write_text("EBTEST_1.0 { global: one; two; local: *; };\n")
    (d / "eb.c").write_text("int one(void) { return 1; }\nint two(void) { return 2; }\n")
    for ver in ("new", "old"):
        _cc(d, "-shared", "-fPIC", "-Wl,-soname,libebtest.so.1", f"-Wl,--version-script={ver}.map",
            "eb.c", "-o", f"{ver}/libebtest.so.1")
    (d / "ext.c").write_text("#include <sys/random.h>\nint two(void);\n"
                             "int ext(void) { char b[4]; return (int)getrandom(b, 4, 0)"
                             " + two(); }\n")
    _cc(d, "-shared", "-fPIC", "-Wl,--no-as-needed", "ext.c", "-Lnew", "-l:libebtest.so.1",
        "-o", "ext.so")
    (d / "cxx.cc").write_text(
        "#include <condition_variable>\n#include <mutex>\n#include <string>\n"
        "std::mutex m; std::condition_variable cv; bool ready = false;\n"
        "std::string wait_ready(const char* s) { std::unique_lock<std::mutex> l(m);\n"
        "  while (!ready) cv.wait(l); return s; }\n")
    _cc(d, "-shared", "-fPIC", "cxx.cc", "-o", "cxx.so", cc="g++")
    real = read_dynamic(f"{MULTIARCH}/libstdc++.so.6").verdef
    fake = [v for v in real if not (v.startswith("GLIBCXX_3.4.")
                                    and int(v.rsplit(".", 1)[1]) > 28)]
    (d / "fakecxx.c").write_text(_version_script(d / "fakecxx.map", fake))
    _cc(d, "-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libstdc++.so.6",
        "-Wl,--version-script=fakecxx.map", "fakecxx.c", "-o", "fakecxx/libstdc++.so.6")
    (d / "fakelibc.c").write_text(_version_script(
        d / "fakelibc.map", ["GLIBC_2.2.5", "GLIBC_2.4", "GLIBC_2.17", "GLIBC_2.24"]))
    _cc(d, "-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libc.so.6",
        "-Wl,--version-script=fakelibc.map", "fakelibc.c", "-o", "fakelibc/libc.so.6")
    (d / "m32.c").write_text("int m32(void) { return 32; }\n")
    _cc(d, "-m32", "-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libm.so.6", "m32.c",
        "-o", "m32/libm.so.6")
    return Built(d, d / "new/libebtest.so.1", d / "old/libebtest.so.1", d / "ext.so",
                 d / "cxx.so", d / "fakecxx/libstdc++.so.6", d / "fakelibc/libc.so.6",
                 d / "m32/libm.so.6")


def _env(root: Path, files: dict[str, Path], optional: tuple[str, ...] = ()) -> Needs:
    """An env at `root` holding `files`, and its needs as a launch reads them: scanned,
    written as quick-sidecar records, read back."""
    for rel, src in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    needs = scan(root, sorted(files))
    text = format_quick([("site", "x"), *host_records(needs, optional)])
    return needs_from_records(read_quick(text))


def _lines(gaps: list[Gap]) -> list[str]:
    return [g.line() for g in gaps]


# ---- resolution against the real loader --------------------------------------------------


def _loader_view(file: str, llp: str | None, cwd: Path) -> dict[str, str | None]:
    """What `ld.so --list FILE` maps each listed soname to (None: not found)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if llp is not None:
        env["LD_LIBRARY_PATH"] = llp
    proc = subprocess.run([LD_SO, "--list", file], env=env, cwd=cwd, capture_output=True,
                          text=True)
    view: dict[str, str | None] = {}
    # a library it cannot find stops it: `error while loading shared libraries: NAME: ...`
    _, sep, rest = proc.stderr.partition("error while loading shared libraries: ")
    if sep and ": cannot open shared object file" in rest:
        view[rest.split(":", 1)[0]] = None
    for line in proc.stdout.splitlines():
        name, sep, rest = line.strip().partition(" => ")
        if sep:
            view.setdefault(name, None if rest == "not found" else rest.rsplit(" (", 1)[0])
    return view


def _same_as_loader(files: list[str], llp: str | None, cwd: Path) -> int:
    """Every direct need of every file resolves to the loader's file; how many were held."""
    held = 0
    for file in files:
        theirs = _loader_view(file, llp, cwd)
        for soname in read_dynamic(file).needed:
            if soname not in theirs:
                continue   # the loader itself (ld-linux), already mapped
            ours = resolve(soname, file, ld_library_path=llp if llp is not None else "")
            want = theirs[soname]
            assert (ours and os.path.realpath(ours)) == (
                want and os.path.realpath(os.path.join(cwd, want))), (file, soname, llp)
            if want and want.startswith("/"):
                assert ours == want, (file, soname)   # the very string, `..` and all
            held += 1
    return held


def _real_files() -> list[str]:
    dynload = next(p for p in sys.path if p.endswith("lib-dynload"))
    exts = sorted(str(p) for p in Path(dynload).glob("*.so"))
    libs = [f"{MULTIARCH}/{n}" for n in ("libstdc++.so.6", "libssl.so.3", "libcrypto.so.3",
                                         "libsqlite3.so.0", "libtiff.so.6", "libgcc_s.so.1")]
    bins = ["/usr/bin/gcc", "/usr/bin/readelf", "/usr/bin/patchelf", sys.executable]
    return exts + [p for p in libs + bins if os.path.exists(p)]


def test_resolution_matches_the_loader_without_ld_library_path(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               ) -> None:
    monkeypatch.chdir(tmp_path)
    assert _same_as_loader(_real_files(), None, tmp_path) > 100


def test_resolution_matches_the_loader_with_ld_library_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: Built) -> None:
    """A 32-bit libm first (skipped), copies of libz and libbz2, a relative dir, the empty
    entry (cwd), a missing dir, trailing slashes and `;` as a separator."""
    first, rel = tmp_path / "first", tmp_path / "rel"
    first.mkdir()
    rel.mkdir()
    shutil.copy(built.m32_libm, first / "libm.so.6")
    shutil.copy(f"{MULTIARCH}/libz.so.1", first / "libz.so.1")
    shutil.copy(f"{MULTIARCH}/libbz2.so.1.0", rel / "libbz2.so.1.0")
    shutil.copy(f"{MULTIARCH}/liblzma.so.5", tmp_path / "liblzma.so.5")
    monkeypatch.chdir(tmp_path)
    llp = f"{first}//:/nonexistent;rel::"
    assert _same_as_loader(_real_files(), llp, tmp_path) > 100
    assert resolve("libm.so.6", _real_files()[0], llp) != str(first / "libm.so.6")
    assert resolve("libbz2.so.1.0", None, llp) == str(rel / "libbz2.so.1.0")
    assert resolve("liblzma.so.5", None, llp) == str(tmp_path / "liblzma.so.5")


@pytest.fixture()
def tree(tmp_path: Path, built: Built) -> Path:
    """bin/runpath.so (RUNPATH $ORIGIN/../lib) and bin/rpath.so (RPATH, the same), lib/
    with the new libebtest, other/ with the old one."""
    for sub in ("bin", "lib", "other"):
        (tmp_path / sub).mkdir()
    shutil.copy(built.new, tmp_path / "lib/libebtest.so.1")
    shutil.copy(built.old, tmp_path / "other/libebtest.so.1")
    for name, tags in (("runpath", "--enable-new-dtags"), ("rpath", "--disable-new-dtags")):
        _cc(built.root, "-shared", "-fPIC", "ext.c", "-Lnew", "-l:libebtest.so.1",
            "-Wl,-rpath,$ORIGIN/../lib", f"-Wl,{tags}", "-o", str(tmp_path / f"bin/{name}.so"))
    return tmp_path


def test_rpath_comes_before_ld_library_path_and_runpath_after(tree: Path) -> None:
    runpath, rpath = str(tree / "bin/runpath.so"), str(tree / "bin/rpath.so")
    assert read_dynamic(runpath).runpath == read_dynamic(rpath).rpath == "$ORIGIN/../lib"
    ours = str(tree / "bin/../lib/libebtest.so.1")
    for llp in (None, str(tree / "other")):
        assert _same_as_loader([runpath, rpath], llp, tree) >= 4
        assert resolve("libebtest.so.1", rpath, llp or "") == ours
    assert resolve("libebtest.so.1", runpath, "") == ours
    assert resolve("libebtest.so.1", runpath, str(tree / "other")) == str(
        tree / "other/libebtest.so.1")


def test_platform_is_the_loaders() -> None:
    """$PLATFORM is what ld.so itself names AT_PLATFORM (glibc picks "haswell" on a recent
    Intel CPU whatever the kernel says)."""
    out = subprocess.run([LD_SO, "--help"], capture_output=True, text=True).stdout
    named = [line.split()[0] for line in out.splitlines() if "(AT_PLATFORM" in line]
    assert named == [loader_platform()], out


def test_dynamic_string_tokens(tmp_path: Path, built: Built) -> None:
    """${ORIGIN}, $LIB and $PLATFORM expand as the loader expands them."""
    lib = MULTIARCH[1:]
    runpath = f"${{ORIGIN}}/sub:{tmp_path}/$LIB:{tmp_path}/p/$PLATFORM:$ORIGINAL"
    _cc(built.root, "-shared", "-fPIC", "ext.c", "-Lnew", "-l:libebtest.so.1",
        f"-Wl,-rpath,{runpath}", "-Wl,--enable-new-dtags", "-o", str(tmp_path / "tok.so"))
    tok = str(tmp_path / "tok.so")
    for where in (f"p/{loader_platform()}", lib, "sub"):   # each one earlier in the path
        (tmp_path / where).mkdir(parents=True)
        shutil.copy(built.new, tmp_path / where / "libebtest.so.1")
        assert _same_as_loader([tok], None, tmp_path) >= 2
        assert resolve("libebtest.so.1", tok, "") == str(tmp_path / where / "libebtest.so.1")


def _set_nodeflib(path: Path) -> None:
    """DF_1_NODEFLIB in a real file's DT_FLAGS_1 (ld ignores `-z nodeflib` for these)."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        dyn = next(s for s in elf.iter_sections() if isinstance(s, DynamicSection))
        tags = [t.entry.d_tag for t in dyn.iter_tags()]
        at = dyn["sh_offset"] + tags.index("DT_FLAGS_1") * dyn["sh_entsize"]
    data = bytearray(path.read_bytes())
    value = int.from_bytes(data[at + 8:at + 16], "little") | 0x800
    data[at + 8:at + 16] = value.to_bytes(8, "little")
    path.write_bytes(bytes(data))


def test_nodeflib_skips_the_cache_and_default_dirs(tmp_path: Path, built: Built) -> None:
    (tmp_path / "z.c").write_text("#include <zlib.h>\n"
                                  "const char* v(void) { return zlibVersion(); }\n")
    (tmp_path / "zlib.h").write_text("const char* zlibVersion(void);\n")
    _cc(tmp_path, "-shared", "-fPIC", "-I.", "z.c", f"{MULTIARCH}/libz.so.1", "-Wl,-z,now",
        "-o", "nd.so")
    _set_nodeflib(tmp_path / "nd.so")
    nd = str(tmp_path / "nd.so")
    assert read_dynamic(nd).flags_1 & 0x800
    assert _loader_view(nd, None, tmp_path)["libz.so.1"] is None
    assert resolve("libz.so.1", nd, "") is None
    (tmp_path / "d").mkdir()
    shutil.copy(f"{MULTIARCH}/libz.so.1", tmp_path / "d")
    assert _same_as_loader([nd], str(tmp_path / "d"), tmp_path) >= 1


def test_a_soname_with_a_slash_is_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         built: Built) -> None:
    monkeypatch.chdir(built.root)
    assert resolve("new/libebtest.so.1", None, "") == str(built.new)
    assert resolve("./absent/libx.so", None, "") is None


def test_ld_so_cache_reads_as_ldconfig_prints_it() -> None:
    out = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True,
                         check=True).stdout
    printed = set()
    for line in out.splitlines():
        if " => " not in line:
            continue
        name, _, rest = line.strip().partition(" (")
        kind, _, path = rest.partition(") => ")
        printed.add((name, kind.split(",")[1] if "," in kind else "", path))
    ours = {(name, {0x0303: "x86-64", 0x0003: ""}.get(flags, "?"), path)
            for name, entries in read_ld_so_cache("/etc/ld.so.cache").items()
            for flags, _hwcap, path in entries}
    assert len(ours) > 100
    assert ours == printed


# ---- gaps --------------------------------------------------------------------------------


def test_version_gap_end_to_end(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    root = str(tmp_path / "env")
    assert "EBTEST_2.0" in needs.versions["libebtest.so.1"]
    assert check(needs, root, ld_library_path=str(built.new.parent)) == []
    gaps = check(needs, root, ld_library_path=f"{built.old.parent}:{built.new.parent}")
    assert _lines(gaps) == ["host: libebtest.so.1: expected EBTEST_2.0 (for pkg/_ext.so), "
                            "found up to EBTEST_1.0"]
    assert not gaps[0].optional


def test_missing_library_and_optional(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext, "pkg/_other.so": built.ext})
    assert _lines(check(needs, str(tmp_path / "env"), ld_library_path="")) == [
        "host: libebtest.so.1: expected a shared library on this host "
        "(for pkg/_ext.so, pkg/_other.so), found none"]
    opt = _env(tmp_path / "env2", {"pkg/_ext.so": built.ext}, optional=("libebtest.so.1",))
    gaps = check(opt, str(tmp_path / "env2"), ld_library_path=str(built.old.parent))
    assert [g.optional for g in gaps] == [True]
    assert gaps[0].line().startswith("host: libebtest.so.1: expected EBTEST_2.0")


def test_a_file_that_is_not_elf_stops_the_loader(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/libebtest.so.1").write_text("not a library\n")
    llp = f"{tmp_path / 'bad'}:{built.new.parent}"
    proc = subprocess.run([LD_SO, "--list", str(tmp_path / "env/pkg/_ext.so")],
                          env={**os.environ, "LD_LIBRARY_PATH": llp}, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "libebtest.so.1" in proc.stderr
    assert _lines(check(needs, str(tmp_path / "env"), ld_library_path=llp)) == [
        "host: libebtest.so.1: expected a shared library on this host (for pkg/_ext.so), "
        f"found {tmp_path / 'bad/libebtest.so.1'}, not a readable ELF file"]


def test_glibc_line_names_the_files_needing_the_highest_version(tmp_path: Path,
                                                                built: Built) -> None:
    files = {f"pkg/m{i}.so": built.ext for i in range(5)}
    needs = _env(tmp_path / "env", files)
    assert needs.glibc == "2.25"
    llp = str(built.new.parent)
    assert check(needs, str(tmp_path / "env"), ld_library_path=llp) == []
    assert _lines(check(needs, str(tmp_path / "env"), glibc="2.17", ld_library_path=llp)) == [
        "host: glibc: expected >= 2.25 (for pkg/m0.so, pkg/m1.so, pkg/m2.so and 2 more), "
        "found 2.17"]


def test_glibc_versions_of_an_older_libc(tmp_path: Path, built: Built) -> None:
    """A libc.so.6 defining GLIBC_2.2.5 .. 2.24: "found up to" orders 2.24 above 2.4; the
    glibc line, when there is one, stands for the GLIBC versions above the running one."""
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    llp = f"{built.fake_libc.parent}:{built.new.parent}"
    root = str(tmp_path / "env")
    assert _lines(check(needs, root, ld_library_path=llp)) == [
        "host: libc.so.6: expected GLIBC_2.25 (for pkg/_ext.so), found up to GLIBC_2.24"]
    assert _lines(check(needs, root, glibc="2.24", ld_library_path=llp)) == [
        "host: glibc: expected >= 2.25 (for pkg/_ext.so), found 2.24"]


def test_libstdcxx_versions(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_cxx.so": built.cxx})
    root = str(tmp_path / "env")
    glibcxx = [v for v in needs.versions["libstdc++.so.6"] if v.startswith("GLIBCXX_3.4.")]
    newest = max(glibcxx, key=lambda v: int(v.rsplit(".", 1)[1]))
    assert int(newest.rsplit(".", 1)[1]) > 28, "g++ too old to need a GLIBCXX above 3.4.28"
    cxx = str(tmp_path / "env/pkg/_cxx.so")
    assert _same_as_loader([cxx], None, tmp_path) >= 2
    assert resolve("libstdc++.so.6", cxx, "") == f"{MULTIARCH}/libstdc++.so.6"
    assert check(needs, root, ld_library_path="") == []
    lines = _lines(check(needs, root, ld_library_path=str(built.fake_cxx.parent)))
    above = sorted((v for v in glibcxx if int(v.rsplit(".", 1)[1]) > 28),
                   key=lambda v: int(v.rsplit(".", 1)[1]))
    assert lines == [f"host: libstdc++.so.6: expected {v} (for pkg/_cxx.so), found up to "
                     "GLIBCXX_3.4.28" for v in above]
    assert f"host: libstdc++.so.6: expected {newest} (for pkg/_cxx.so), found up to " \
           "GLIBCXX_3.4.28" in lines


def test_found_none_of_the_family(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_cxx.so": built.cxx})
    (tmp_path / "bare").mkdir()
    shutil.copy(built.fake_libc, tmp_path / "bare/libstdc++.so.6")   # no GLIBCXX_* at all
    lines = _lines(check(needs, str(tmp_path / "env"), ld_library_path=str(tmp_path / "bare")))
    assert lines and all(line.endswith(("found none of GLIBCXX_*", "found none of CXXABI_*"))
                         for line in lines)
    assert any(line.endswith("found none of GLIBCXX_*") for line in lines)


def test_old_records_without_files_still_check(built: Built) -> None:
    needs = needs_from_records(read_quick("envbuild.quick/1\nglibc\t99.0\n"
                                          "lib\tlibebtest-absent.so.9\nlib\tlibc.so.6\n"))
    assert _lines(check(needs, "/nonexistent", ld_library_path="")) == [
        f"host: glibc: expected >= 99.0, found {host_glibc()}",
        "host: libebtest-absent.so.9: expected a shared library on this host, found none"]


# ---- the per-host cache: one test per input ----------------------------------------------


class Entry:
    """The host-cache files, to tell a hit (nothing rewritten) from a miss."""

    def __init__(self) -> None:
        self.seen = self._state()

    @staticmethod
    def _state() -> dict[str, int]:
        d = Path(host_cache_dir())
        return {p.name: p.stat().st_ino for p in d.glob("hostlibs-*")} if d.is_dir() else {}

    def changed(self) -> bool:
        now = self._state()
        changed = now != self.seen
        self.seen = now
        return changed


def _hit_then(needs: Needs, root: Path, ld_library_path: str, fresh: bool = True,
              glibc: str | None = "", cache_path: str = loader.LD_SO_CACHE) -> list[str]:
    """host_gaps twice: the first computes afresh (`fresh`) and stores its answer, the
    second must be a hit with the same answer."""
    entry = Entry()
    first = _lines(host_gaps(needs, str(root), glibc=glibc, ld_library_path=ld_library_path,
                             cache_path=cache_path))
    assert entry.changed() == fresh, "a changed input was answered from the cache"
    assert _lines(host_gaps(needs, str(root), glibc=glibc, ld_library_path=ld_library_path,
                            cache_path=cache_path)) == first
    assert not entry.changed(), "an unchanged host was not a cache hit"
    return first


GAP = "host: libebtest.so.1: expected EBTEST_2.0 (for pkg/_ext.so), found up to EBTEST_1.0"


def test_cache_follows_ld_library_path(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    assert _hit_then(needs, tmp_path / "env", str(built.new.parent)) == []
    assert _hit_then(needs, tmp_path / "env", str(built.old.parent)) == [GAP]


def test_cache_follows_a_replaced_library(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    (tmp_path / "d").mkdir()
    shutil.copy(built.new, tmp_path / "d/libebtest.so.1")
    assert _hit_then(needs, tmp_path / "env", str(tmp_path / "d")) == []
    shutil.copy(built.old, tmp_path / "d/new.tmp")
    os.replace(tmp_path / "d/new.tmp", tmp_path / "d/libebtest.so.1")   # a new inode
    assert _hit_then(needs, tmp_path / "env", str(tmp_path / "d")) == [GAP]


def test_cache_follows_a_library_rewritten_in_place(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    (tmp_path / "d").mkdir()
    lib = tmp_path / "d/libebtest.so.1"
    shutil.copy(built.new, lib)
    assert _hit_then(needs, tmp_path / "env", str(tmp_path / "d")) == []
    ino = lib.stat().st_ino
    with open(lib, "r+b") as fh:   # same inode and dir: only size, mtime and ctime change
        fh.truncate(0)
        fh.write(built.old.read_bytes())
    assert lib.stat().st_ino == ino
    assert _hit_then(needs, tmp_path / "env", str(tmp_path / "d")) == [GAP]


def test_cache_follows_a_library_added_earlier_in_the_search_path(tmp_path: Path,
                                                                  built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    (tmp_path / "early").mkdir()
    llp = f"{tmp_path / 'early'}:{built.new.parent}"
    assert _hit_then(needs, tmp_path / "env", llp) == []
    shutil.copy(built.old, tmp_path / "early/libebtest.so.1")
    assert _hit_then(needs, tmp_path / "env", llp) == [GAP]


def test_cache_follows_ld_so_cache(tmp_path: Path, built: Built) -> None:
    """A copy of the host's cache, then one the real ldconfig writes naming old/."""
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    cache = tmp_path / "ld.so.cache"
    shutil.copy("/etc/ld.so.cache", cache)
    missing = ("host: libebtest.so.1: expected a shared library on this host "
               "(for pkg/_ext.so), found none")
    assert _hit_then(needs, tmp_path / "env", "", cache_path=str(cache)) == [missing]
    (tmp_path / "ld.so.conf").write_text(f"{built.old.parent}\n")
    subprocess.run(["/sbin/ldconfig", "-i", "-X", "-f", str(tmp_path / "ld.so.conf"),
                    "-C", str(tmp_path / "new.cache")], check=True, capture_output=True)
    assert read_ld_so_cache(str(tmp_path / "new.cache"))["libebtest.so.1"][0][2] == str(
        built.old)
    os.replace(tmp_path / "new.cache", cache)
    assert _hit_then(needs, tmp_path / "env", "", cache_path=str(cache)) == [GAP]


def test_cache_follows_the_running_glibc(tmp_path: Path, built: Built) -> None:
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    llp = str(built.new.parent)
    assert _hit_then(needs, tmp_path / "env", llp, glibc="2.36") == []
    assert _hit_then(needs, tmp_path / "env", llp, glibc="2.17") == [
        "host: glibc: expected >= 2.25 (for pkg/_ext.so), found 2.17"]


def test_cache_follows_the_needs(tmp_path: Path, built: Built) -> None:
    """The same env and host, needs that differ only in what is optional: other answers."""
    plain = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    optional = _env(tmp_path / "env", {"pkg/_ext.so": built.ext}, optional=("libebtest.so.1",))
    assert plain.source != optional.source
    llp = str(built.old.parent)
    for needs, flag, fresh in ((plain, False, True), (optional, True, True),
                               (plain, False, False)):   # each keeps its own entry
        assert _hit_then(needs, tmp_path / "env", llp, fresh) == [GAP]
        gaps = host_gaps(needs, str(tmp_path / "env"), ld_library_path=llp)
        assert [g.optional for g in gaps] == [flag]


def test_cache_follows_the_needing_file(tmp_path: Path, built: Built) -> None:
    """The file needing a library decides where it is searched for (its RUNPATH)."""
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    assert _hit_then(needs, tmp_path / "env", "") == [
        "host: libebtest.so.1: expected a shared library on this host (for pkg/_ext.so), "
        "found none"]
    ext = tmp_path / "env/pkg/_ext.so"
    subprocess.run(["patchelf", "--set-rpath", str(built.new.parent), str(ext)], check=True)
    assert read_dynamic(str(ext)).runpath == str(built.new.parent)
    assert _hit_then(needs, tmp_path / "env", "") == []


def test_cache_follows_the_host(tmp_path: Path, built: Built) -> None:
    """An entry copied to another host name's cache dir is not taken for that host's."""
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, text=True)
    assert probe.returncode == 0, ("the test needs a UTS namespace (`unshare --uts`, as root, "
                                   f"util-linux): {probe.stderr}")
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext})
    llp = str(built.old.parent)
    assert _hit_then(needs, tmp_path / "env", llp) == [GAP]
    other = Path(host_cache_dir()).parent / "envbuild-other-host"
    other.mkdir(exist_ok=True)
    for p in Path(host_cache_dir()).glob("hostlibs-*"):
        shutil.copy(p, other / p.name)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from envbuild import loader; "
            "from envbuild.sidecars import read_quick; "
            "n = loader.needs_from_records(read_quick(sys.stdin.read())); "
            "print(len(loader.host_gaps(n, sys.argv[2], ld_library_path=sys.argv[3])), "
            "'envbuild.elfread' in sys.modules)")
    text = format_quick(host_records(scan(tmp_path / "env", ["pkg/_ext.so"])))
    out = subprocess.run(["unshare", "--uts", "sh", "-c",
                          'hostname envbuild-other-host && exec "$@"', "sh", sys.executable,
                          "-c", code, str(REPO), str(tmp_path / "env"), llp],
                         input=text, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "True"]   # the answer, computed afresh (ELF files read)


def test_a_hit_reads_no_elf_file(tmp_path: Path, built: Built) -> None:
    """In a fresh process, a hit imports no ELF reader and replays gaps, optional flag too."""
    needs = _env(tmp_path / "env", {"pkg/_ext.so": built.ext}, optional=("libebtest.so.1",))
    llp = str(built.old.parent)
    gaps = host_gaps(needs, str(tmp_path / "env"), ld_library_path=llp)
    assert [(g.line(), g.optional) for g in gaps] == [(GAP, True)]
    text = format_quick(host_records(scan(tmp_path / "env", ["pkg/_ext.so"]),
                                     ["libebtest.so.1"]))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from envbuild import loader; "
            "from envbuild.sidecars import read_quick; "
            "n = loader.needs_from_records(read_quick(sys.stdin.read())); "
            "g = loader.host_gaps(n, sys.argv[2], ld_library_path=sys.argv[3]); "
            "print([(x.line(), x.optional) for x in g]); "
            "bad = {'envbuild.elfread', 're', 'json', 'hashlib', 'typing'} & set(sys.modules); "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO),
                          str(tmp_path / "env"), llp], input=text, capture_output=True,
                         text=True, env={**os.environ}, check=True).stdout
    assert out.strip() == repr([(GAP, True)])
