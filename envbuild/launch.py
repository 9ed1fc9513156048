"""Launching a program in a verified env: the environment contract, exec, signals, and the
run record. Stdlib only and light to import: this is on every launch path.

`envbuild run` and `ENV/bin/envbuild-guard` both end up in `launch()`.
"""

from __future__ import annotations

import os
import sys
import time

from .children import SIGCHLD, DefaultSigchld
from .errors import (
    NOT_EXECUTABLE,
    REFUSED,
    CommandNotExecutable,
    CommandNotFound,
    EnvbuildError,
    NotAnEnvError,
    Refused,
    UsageError,
    exit_status,
    report,
)
from .layout import LAUNCH_DIR, MANIFEST, mark_used, resolve_pointer
from .runlog import record
from .verify import LEVELS, Difference, Report, verify

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from collections.abc import Callable

_FORWARDED = (2, 3, 15)      # SIGINT, SIGQUIT, SIGTERM
_SI_KERNEL = 0x80           # siginfo code of a signal the tty driver sent to the whole group
_root_warned = False


def apply_contract(quick: dict[str, list[list[str]]], environ: dict[str, str],
                   env_dir: str) -> dict[str, str]:
    """The environment a program gets: scrubbed, defaults applied, the env's bin/ first."""
    out = dict(environ)
    for (name,) in quick.get("unset", []):
        out.pop(name, None)
    for name, value in quick.get("set", []):
        out.setdefault(name, value)
    missing = [name for (name,) in quick.get("require", []) if name not in out]
    if missing:
        raise Refused("\n".join(f"environment: {n}: expected set (the recipe requires it), "
                                "found unset" for n in missing))
    out["PATH"] = os.path.join(env_dir, "bin") + os.pathsep + out.get("PATH", os.defpath)
    out["VIRTUAL_ENV"] = env_dir
    out["PYTHONDONTWRITEBYTECODE"] = "1"   # pycs are precompiled; a root run adds no files
    return out


def find_command(cmd: str, path: str) -> str:
    """The executable `cmd` names, searched on `path`."""
    candidates = [cmd] if "/" in cmd else [os.path.join(d or ".", cmd) for d in path.split(":")]
    found_not_exec = None
    for cand in candidates:
        if os.path.isfile(cand):
            if os.access(cand, os.X_OK):
                return cand
            found_not_exec = cand
    if found_not_exec:
        raise CommandNotExecutable(f"{found_not_exec}: not executable")
    raise CommandNotFound(f"{cmd}: command not found")


def launch(env: str, argv: list[str], level: str = "quick", expect: str | None = None,
           trusted_uids: tuple[int, ...] = (), prog: str = "envbuild run") -> int:
    """Verify, apply the contract, run argv, record the run; return CMD's exit status.

    Raise an EnvbuildError when CMD must not start or cannot; the launch is recorded first.
    """
    started = time.time()
    if not argv:   # a command line to fix, not a launch: nothing to record
        raise Refused("no command given (usage: ... [--] CMD ARGS...)")
    try:
        result = verify(env, level=level, expect=expect, trusted_uids=trusted_uids)
    except NotAnEnvError as exc:
        # nothing to verify; still a launch, so still recorded, with the reason as the one
        # difference and no manifest digest
        why = Difference("manifest", MANIFEST, "an envbuild env", str(exc))
        record(Report(os.path.abspath(env), level, None, [why], {}), argv, started, REFUSED,
               None, None, dict(os.environ))
        raise
    mark_used(result.env)   # for `envbuild gc`: one utime in the store, never a failure
    child_env = dict(os.environ)
    try:
        for warning in result.warnings:
            _say(prog, f"warning: {warning}")
        _check_root(result, prog)
        if not result.ok:
            raise Refused("\n".join(d.line() for d in result.differences))
        child_env = apply_contract(result.quick, child_env, result.env)
        exe = find_command(argv[0], child_env["PATH"])
    except EnvbuildError as exc:
        record(result, argv, started, exit_status(exc, launch=True), None, None,
               child_env if not isinstance(exc, Refused) else dict(os.environ))
        raise
    pid, status, forwarded = _spawn(exe, argv, child_env)
    code, sig = _exit_code(status)
    record(result, argv, started, code, sig, pid, child_env, forwarded)
    return code


def _check_root(report: Report, prog: str) -> None:
    global _root_warned
    if os.geteuid() != 0:
        return
    if any(fields == ["refuse"] for fields in report.quick.get("root", [])):
        raise Refused("permissions: user: expected an unprivileged user ([launch] root = "
                      "\"refuse\"), found root; run as a normal user (e.g. `runuser -u USER "
                      "-- ...` or `docker run --user`)")
    quiet = any(fields == ["allow"] for fields in report.quick.get("root", [])) \
        or os.environ.get("ENVBUILD_ROOT_OK") == "1"   # root by design (an image, CI)
    if not _root_warned and not quiet:
        _root_warned = True
        _say(prog, "warning: running as root; any file the program writes in the env's "
                   "reach is root-owned")


def _spawn(exe: str, argv: list[str], child_env: dict[str, str]
           ) -> tuple[int, int, list[int]]:
    """fork/execve CMD, forward SIGINT/SIGTERM/SIGQUIT once each, wait;
    (pid, status, the signals forwarded).

    At a terminal (we are its foreground group), CMD shares our process group so job
    control and reading the terminal work; the terminal's own signals (Ctrl-C, Ctrl-\\)
    reach CMD directly and are not forwarded. Otherwise CMD gets a process group of its
    own, so a signal sent to our group (`timeout`, CI runners) reaches it only through us,
    and it is killed if we die.
    """
    import _signal  # type: ignore[import-not-found,unused-ignore]  # `signal` costs ~13 ms

    watched = {*_FORWARDED, SIGCHLD}
    own_group = not _at_terminal()
    parent = os.getpid()
    forwarded: list[int] = []
    with DefaultSigchld() as chld:
        old = _signal.pthread_sigmask(_signal.SIG_BLOCK, watched)
        try:
            pid = os.fork()
            if pid == 0:  # child
                try:
                    if own_group:
                        os.setpgid(0, 0)
                        _die_with(parent)
                    if chld is not None:
                        _signal.signal(SIGCHLD, chld)   # CMD inherits what we did
                    _signal.pthread_sigmask(_signal.SIG_SETMASK, old)
                    os.execve(exe, argv, child_env)
                finally:
                    os._exit(NOT_EXECUTABLE)
            if own_group:
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass  # the child did it first, or has already exec'd
            while True:
                info = _signal.sigwaitinfo(watched)
                if info.si_signo == SIGCHLD:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        return pid, status, forwarded
                elif own_group or info.si_code != _SI_KERNEL:
                    try:
                        os.kill(pid, info.si_signo)
                        forwarded.append(info.si_signo)
                    except ProcessLookupError:
                        pass
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old)


def _at_terminal() -> bool:
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def _die_with(parent: int) -> None:
    """In CMD before exec: be killed when the launcher dies (it can be SIGKILLed, and CMD
    is outside the process group such a kill was aimed at)."""
    try:
        _prctl()(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    except (ImportError, OSError, AttributeError, TypeError):
        return
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(REFUSED)


def _prctl() -> Callable[..., object]:
    """libc's prctl through `_ctypes` alone: the `ctypes` package costs ~3 ms to import,
    paid on every launch before CMD starts; `ctypes` where `_ctypes` differs."""
    try:
        import _ctypes

        class Int(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "i"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = Int

        return Function(_ctypes.dlsym(_ctypes.dlopen(None, 0),  # type: ignore[arg-type]
                                      "prctl"))
    except (ImportError, AttributeError, TypeError):
        import ctypes

        return ctypes.CDLL(None).prctl


def _exit_code(status: int) -> tuple[int, int | None]:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None


def _say(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: {message}\n")


# ---- command lines: the one reader of `run`, `verify` and the guard ---------------------

RUN_USAGE = ("usage: envbuild run ENV [--level L] [--expect sha256:HEX] [--local DIR] "
             "[--max-readers K] [--] CMD ARGS...")
VERIFY_USAGE = ("usage: envbuild verify ENV [--level quick|files|full] [--expect sha256:HEX] "
                "[--launch] [--json]")
GUARD_USAGE = "usage: envbuild-guard [--level L] [--expect sha256:HEX] [--] CMD ARGS..."
GUARD_VERIFY_USAGE = ("usage: envbuild-guard --verify [--level quick|files|full] "
                      "[--expect sha256:HEX] [--launch] [--json]")
VERIFY_FLAGS = ("--json", "--launch")   # --launch: the launch's own checks too


class Args:
    __slots__ = ("env", "level", "expect", "json", "launch", "cmd", "local", "max_readers")

    def __init__(self) -> None:
        self.env: str | None = None
        self.level = "quick"
        self.expect: str | None = None
        self.local: str | None = None       # run: a staged version materialized there
        self.max_readers = 0
        self.json = False
        self.launch = False                 # verify: the launch's required variables too
        self.cmd: list[str] = []


def is_digest(value: str) -> bool:
    """`sha256:` and 64 lowercase hex digits, the form every envbuild digest takes."""
    hexpart = value[7:]
    return (value.startswith("sha256:") and len(hexpart) == 64
            and all(c in "0123456789abcdef" for c in hexpart))


def parse(args: list[str], usage: str, want_env: bool, want_cmd: bool,
          flags: tuple[str, ...] = ()) -> Args:
    """`[ENV] [--level L] [--expect D] [FLAGS] [--] [CMD ARGS...]`; raise UsageError.

    With `want_cmd`, options stop at the first word after ENV (that word starts CMD, whose
    own options are its own); without, options may come anywhere.
    """
    out = Args()
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--" and want_cmd:
            break
        name, eq, value = word.partition("=")
        if name in ("--level", "--expect") or (name in ("--local", "--max-readers")
                                               and usage == RUN_USAGE):
            if not eq:
                if i >= len(words):
                    raise UsageError(f"{name} needs a value", usage)
                value = words[i]
                i += 1
            if name == "--level":
                out.level = value
            elif name == "--expect":
                out.expect = value
            elif name == "--local":
                out.local = value
            elif not value.isdigit():
                raise UsageError(f"--max-readers: expected a number, found {value!r}", usage)
            else:
                out.max_readers = int(value)
        elif word in flags:
            setattr(out, word[2:], True)
        elif word.startswith("-") and word != "-":
            raise UsageError(f"unexpected argument {word!r} (unknown option; options: "
                             f"--level, --expect{''.join(', ' + f for f in flags)}"
                             f"{'; put -- before CMD' if want_cmd else ''})", usage)
        elif want_env and out.env is None:
            out.env = word
        elif want_cmd:
            i -= 1
            break
        else:
            raise UsageError(f"unexpected argument {word!r}", usage)
    out.cmd = words[i:] if want_cmd else []
    if out.level not in LEVELS:
        raise UsageError(f"--level: expected one of {', '.join(LEVELS)}, found {out.level!r}",
                         usage)
    if out.expect is not None and not is_digest(out.expect):
        raise UsageError(f"--expect: expected sha256: and 64 hex digits (as `envbuild verify "
                         f"--json` prints), found {out.expect!r}", usage)
    if want_env and out.env is None:
        raise UsageError("missing ENV" + (" then CMD" if want_cmd else ""), usage)
    return out


# ---- the hook and the guard -------------------------------------------------------------

def hook_check(prefix: str) -> None:
    """At interpreter start (the `.pth` hook): exit 125 unless the env matches its manifest."""
    try:
        result = verify(prefix, level="quick", contract=False)
        if not result.ok:
            raise Refused("\n".join(d.line() for d in result.differences))
    except Exception as exc:  # noqa: BLE001 - any failure refuses: the program must not run
        os._exit(report(exc, "envbuild-hook", launch=True))
    mark_used(prefix)
    # Leave no trace: the program may have its own `envbuild` on sys.path.
    for name in [m for m in sys.modules if m == "envbuild" or m.startswith("envbuild.")]:
        del sys.modules[name]
    launch_dir = os.path.join(prefix, LAUNCH_DIR)
    if launch_dir in sys.path:
        sys.path.remove(launch_dir)


def verify_and_report(env: str, opts: Args, prog: str) -> int:
    """Verify, print every difference (or `--json`'s report); 0 match, 1 mismatch, 2 not an
    env or a failure of verify itself (never 1, which reads as "differs")."""
    try:
        result = verify(env, level=opts.level, expect=opts.expect, contract=opts.launch)
    except Exception as exc:  # noqa: BLE001
        return report(exc, prog)
    for warning in result.warnings:
        sys.stderr.write(f"{prog}: warning: {warning}\n")
    if opts.json:
        import json

        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        for diff in result.differences:
            print(diff.line())
        if result.ok:
            print(f"ok: {result.env} matches {result.manifest_digest} ({result.level})")
    sys.stdout.flush()
    return 0 if result.ok else 1


def guard_main() -> None:
    """Entry of ENV/bin/envbuild-guard: argv is [-c, BIN_DIR, options..., CMD...]; with
    `--verify` first, it verifies only and reports as `envbuild verify` does (an image's
    ENTRYPOINT is the guard: `docker run IMAGE --verify --json`)."""
    if sys.argv[2:3] == ["--verify"]:
        try:
            env = resolve_pointer(os.path.dirname(os.path.abspath(sys.argv[1])))[0]
            opts = parse(sys.argv[3:], GUARD_VERIFY_USAGE, want_env=False, want_cmd=False,
                         flags=VERIFY_FLAGS)
            code = verify_and_report(env, opts, "envbuild verify")
        except BaseException as exc:  # noqa: BLE001
            code = report(exc, "envbuild verify")
        sys.stdout.flush()
        os._exit(code)
    try:
        env = resolve_pointer(os.path.dirname(os.path.abspath(sys.argv[1])))[0]
        opts = parse(sys.argv[2:], GUARD_USAGE, want_env=False, want_cmd=True)
        if not os.path.exists(os.path.join(env, MANIFEST)):
            raise NotAnEnvError(f"{env} has no {MANIFEST}")
        code = launch(env, opts.cmd, level=opts.level, expect=opts.expect,
                      prog="envbuild-guard")
    except BaseException as exc:  # noqa: BLE001 - any failure of the guard itself refuses
        code = report(exc, "envbuild-guard", launch=True)
    sys.stdout.flush()
    os._exit(code)
