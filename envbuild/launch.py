"""Launching a program in a verified env: the environment contract, exec, signals, and the
run record. Stdlib only and light to import: this is on every launch path.

`envbuild run` and `ENV/bin/envbuild-guard` both end up in `launch()`.
"""

from __future__ import annotations

import os
import sys
import time

from .errors import NotAnEnvError
from .runlog import record
from .verify import LEVELS, MANIFEST, Difference, Report, verify

TYPE_CHECKING = False   # not typing's: importing typing costs the launch path `re`
if TYPE_CHECKING:
    from collections.abc import Callable

REFUSED, NOT_EXECUTABLE, NOT_FOUND = 125, 126, 127
_FORWARDED = (2, 3, 15)      # SIGINT, SIGQUIT, SIGTERM
_SIGCHLD = 17 if sys.platform.startswith("linux") else 20
_SI_KERNEL = 0x80           # siginfo code of a signal the tty driver sent to the whole group
_root_warned = False


class Refused(Exception):
    """The program must not start; the message says why, one line per reason."""


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
    """The executable `cmd` names, searched on `path`; Refused-like errors carry 126/127."""
    candidates = [cmd] if "/" in cmd else [os.path.join(d or ".", cmd) for d in path.split(":")]
    found_not_exec = None
    for cand in candidates:
        if os.path.isfile(cand):
            if os.access(cand, os.X_OK):
                return cand
            found_not_exec = cand
    if found_not_exec:
        raise CommandError(NOT_EXECUTABLE, f"{found_not_exec}: not executable")
    raise CommandError(NOT_FOUND, f"{cmd}: command not found")


class CommandError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def launch(env: str, argv: list[str], level: str = "quick", expect: str | None = None,
           trusted_uids: tuple[int, ...] = (), prog: str = "envbuild run") -> int:
    """Verify, apply the contract, run argv, record the run; return the exit status."""
    started = time.time()
    if not argv:   # a command line to fix, not a launch: nothing to record
        _say(prog, "refused: no command given (usage: ... [--] CMD ARGS...)")
        return REFUSED
    try:
        report = verify(env, level=level, expect=expect, trusted_uids=trusted_uids)
    except NotAnEnvError as exc:
        return _refuse_not_an_env(env, level, argv, started, prog, str(exc))
    env_dir = report.env
    try:
        _check_root(report, prog)
        if not report.ok:
            raise Refused("\n".join(d.line() for d in report.differences))
        child_env = apply_contract(report.quick, dict(os.environ), env_dir)
        exe = find_command(argv[0], child_env["PATH"])
    except Refused as exc:
        for line in str(exc).splitlines():
            _say(prog, f"refused: {line}")
        record(report, argv, started, REFUSED, None, None, dict(os.environ))
        return REFUSED
    except CommandError as exc:
        _say(prog, str(exc))
        record(report, argv, started, exc.code, None, None, child_env)
        return exc.code
    pid, status, forwarded = _spawn(exe, argv, child_env)
    code, sig = _exit_code(status)
    record(report, argv, started, code, sig, pid, child_env, forwarded)
    return code


def _refuse_not_an_env(env: str, level: str, argv: list[str], started: float, prog: str,
                       reason: str) -> int:
    """Nothing to verify; still a launch, so still recorded, with the reason as the one
    difference and no manifest digest."""
    _say(prog, f"refused: {reason}")
    why = Difference("manifest", MANIFEST, "an envbuild env", reason)
    record(Report(os.path.abspath(env), level, None, [why], {}), argv, started, REFUSED, None,
           None, dict(os.environ))
    return REFUSED


def _check_root(report: Report, prog: str) -> None:
    global _root_warned
    if os.geteuid() != 0:
        return
    if any(fields == ["refuse"] for fields in report.quick.get("root", [])):
        raise Refused("permissions: user: expected an unprivileged user ([launch] root = "
                      "\"refuse\"), found root; run as a normal user (e.g. `runuser -u USER "
                      "-- ...` or `docker run --user`)")
    if not _root_warned:
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

    watched = {*_FORWARDED, _SIGCHLD}
    own_group = not _at_terminal()
    parent = os.getpid()
    forwarded: list[int] = []
    # an inherited SIG_IGN for SIGCHLD would reap CMD unseen and wait forever; None: not
    # the main thread, or a handler set from C, which cannot be put back (left as it is)
    try:
        chld = _signal.signal(_SIGCHLD, _signal.SIG_DFL)
    except ValueError:
        chld = None
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, watched)
    try:
        pid = os.fork()
        if pid == 0:  # child
            try:
                if own_group:
                    os.setpgid(0, 0)
                    _die_with(parent)
                if chld is not None:
                    _signal.signal(_SIGCHLD, chld)   # CMD inherits what we did
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
            if info.si_signo == _SIGCHLD:
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
        if chld is not None:
            _signal.signal(_SIGCHLD, chld)


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


# ---- command lines -----------------------------------------------------------------------


def is_digest(value: str) -> bool:
    """`sha256:` and 64 lowercase hex digits, the form every envbuild digest takes."""
    hexpart = value[7:]
    return (value.startswith("sha256:") and len(hexpart) == 64
            and all(c in "0123456789abcdef" for c in hexpart))


def parse_launch_args(args: list[str], prog: str, want_env: bool = False
                      ) -> tuple[dict[str, str | None], list[str]]:
    """`[--level L] [--expect D] [ENV] [--] CMD ARGS...`: options stop at CMD.

    With `want_env`, the first word that is not an option is ENV (returned as opts["env"]).
    """
    opts: dict[str, str | None] = {"level": "quick", "expect": None, "env": None}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        name, eq, value = arg.partition("=")
        if name == "--local":
            raise CommandError(REFUSED, f"{prog}: --local: staged envs are not supported by "
                                        "this version; run the env directly")
        if name in ("--level", "--expect"):
            if not eq:
                if i + 1 >= len(args):
                    raise CommandError(REFUSED, f"{prog}: {name} needs a value")
                value = args[i + 1]
                i += 1
            opts[name[2:]] = value
            i += 1
            if name == "--expect" and not is_digest(value):
                raise CommandError(REFUSED, f"{prog}: --expect: expected sha256: and 64 hex "
                                            f"digits (as `envbuild verify --json` prints), "
                                            f"found {value!r}")
            continue
        if arg.startswith("-") and arg != "-":
            raise CommandError(REFUSED, f"{prog}: unknown option {arg} (options: --level, "
                                        "--expect; put -- before CMD)")
        if want_env and opts["env"] is None:
            opts["env"] = arg
            i += 1
            continue
        break
    if opts["level"] not in LEVELS:
        raise CommandError(REFUSED, f"{prog}: --level: expected one of {', '.join(LEVELS)}, "
                                    f"found {opts['level']!r}")
    if want_env and opts["env"] is None:
        raise CommandError(REFUSED, f"{prog}: expected ENV then CMD (usage: {prog} ENV "
                                    "[--level L] [--expect D] [--] CMD ARGS...)")
    return opts, args[i:]


HOOK_PTH = "000-envbuild-hook.pth"
# `site` runs a venv's .pth files twice (Python 3.11 adds the venv's site-packages both in
# venv() and with the other prefixes): once per process is enough
_HOOK_CODE = """\
import os as _o, sys as _s
if not getattr(_s, "_envbuild_hook_checked", False):
    _p = _o.path.join(_s.prefix, "lib", "envbuild-launch")
    try:
        _s.path.insert(0, _p)
        from envbuild.launch import hook_check as _h
        _h(_s.prefix)
        _s._envbuild_hook_checked = True
    except BaseException as _e:
        _s.stderr.write("envbuild-hook: refused: internal error: %r\\n" % (_e,))
        _o._exit(125)
"""


def hook_line() -> str:
    """The one line of the opt-in `.pth` hook: `site` runs lines that start with `import`,
    and swallows their exceptions, hence `os._exit`."""
    return f"import sys; exec({_HOOK_CODE!r})\n"


def hook_check(prefix: str) -> None:
    """At interpreter start (the `.pth` hook): exit 125 unless the env matches its manifest."""
    try:
        report = verify(prefix, level="quick", contract=False)
    except NotAnEnvError as exc:
        sys.stderr.write(f"envbuild-hook: refused: {exc}\n")
        os._exit(REFUSED)
    if not report.ok:
        for diff in report.differences:
            sys.stderr.write(f"envbuild-hook: refused: {diff.line()}\n")
        os._exit(REFUSED)
    # Leave no trace: the program may have its own `envbuild` on sys.path.
    for name in [m for m in sys.modules if m == "envbuild" or m.startswith("envbuild.")]:
        del sys.modules[name]
    launch_dir = os.path.join(prefix, "lib", "envbuild-launch")
    if launch_dir in sys.path:
        sys.path.remove(launch_dir)


def guard_main() -> None:
    """Entry of ENV/bin/envbuild-guard: argv is [-c, BIN_DIR, options..., CMD...]."""
    try:
        env = os.path.dirname(os.path.abspath(sys.argv[1]))
        opts, cmd = parse_launch_args(sys.argv[2:], "envbuild-guard")
        if not os.path.exists(os.path.join(env, MANIFEST)):
            raise CommandError(REFUSED, f"envbuild-guard: refused: {env} has no {MANIFEST}")
        code = launch(env, cmd, level=str(opts["level"]), expect=opts["expect"],
                      prog="envbuild-guard")
    except CommandError as exc:
        sys.stderr.write(f"{exc}\n")
        code = exc.code
    except BaseException as exc:  # noqa: BLE001 - any failure of the guard itself refuses
        sys.stderr.write(f"envbuild-guard: refused: internal error: {exc!r}\n")
        code = REFUSED
    sys.stdout.flush()
    os._exit(code)
