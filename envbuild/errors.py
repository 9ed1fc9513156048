"""One exception hierarchy, and the one place an error becomes a message and an exit code.

Stdlib only and light to import: the launch path (the guard, the hook, `envbuild run`)
uses it too. Each class carries two codes: `exit_code` for the commands that report
(`lock`, `build`, `verify`: 1 failed or differs, 2 bad input) and `launch_code` for the
commands that start a program (`run`, the guard, the hook), where any failure before the
program started refuses with 125, so it can never pass for the program's own status.
"""

from __future__ import annotations

import errno
import sys

REFUSED, NOT_EXECUTABLE, NOT_FOUND = 125, 126, 127
# after a failure that is not envbuild's own error, where no traceback was shown
DEBUG_HINT = "run `envbuild --debug ...` to see where it happened"


class EnvbuildError(Exception):
    """Base of every error envbuild raises on purpose."""

    exit_code = 1
    launch_code = REFUSED


class InputError(EnvbuildError):
    """Bad input from the user: a recipe, a flag, a lock. Nothing was changed."""

    exit_code = 2


class UsageError(InputError):
    """A command line to fix; `usage` is the line that shows the right form."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class RecipeError(InputError):
    """The recipe is malformed; `issues` lists every problem, one per line."""

    def __init__(self, path: object, issues: list[str]) -> None:
        self.path = path
        self.issues = issues
        super().__init__("\n".join(f"{path}: {issue}" for issue in issues))


class LockError(InputError):
    """The lock is missing, stale or unreadable."""


class CacheIntegrityError(InputError):
    """A cached artifact no longer matches the lock and cannot be fetched again."""


class NotAnEnvError(InputError):
    """A path that should be an envbuild env is not one."""


class ManifestError(NotAnEnvError):
    """A manifest that cannot be read: not JSON, missing keys, an unknown schema."""


class BuildError(EnvbuildError):
    """Building failed after the inputs were accepted."""


class ToolError(EnvbuildError):
    """An external tool (pip, pip-compile) failed; carries the tail of its output."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"{argv[0]} exited with {returncode}:\n{tail}")


class IndexUnreachableError(EnvbuildError):
    """A package index could not be reached: the network, DNS, a proxy, TLS trust."""


class RegistryError(EnvbuildError):
    """A registry refused a push or could not be reached: auth, TLS, connection, its errors."""


class Refused(EnvbuildError):
    """The program must not start; the message says why, one line per reason."""


class CommandNotExecutable(EnvbuildError):
    """CMD names a file that cannot be executed."""

    launch_code = NOT_EXECUTABLE


class CommandNotFound(EnvbuildError):
    """CMD is not on PATH."""

    launch_code = NOT_FOUND


def exit_status(exc: BaseException, launch: bool = False) -> int:
    """The exit code of a command that failed with `exc`.

    An error that is not envbuild's own is a failure of envbuild itself: 125 on a launch,
    2 elsewhere (never 1, which would read as "the env differs" or "the build failed").
    """
    if isinstance(exc, EnvbuildError):
        return exc.launch_code if launch else exc.exit_code
    return REFUSED if launch else 2


_OS_HINTS = {
    errno.ENOENT: "; was it removed while envbuild worked? run the command again",
    errno.EACCES: "; check its owner and mode, or pass another --store",
    errno.EPERM: "; check its owner and mode, or pass another --store",
    errno.ENOSPC: "; free space on that file system, or pass another --store",
    errno.EROFS: "; pass a writable --store",
}


def message_lines(exc: BaseException, launch: bool = False) -> list[str]:
    """What a person reads: one line per problem, in the words of the command that failed."""
    if isinstance(exc, OSError) and exc.strerror:   # the file system under envbuild's feet
        where = f"{exc.filename}: " if exc.filename else ""
        return [f"{'refused: ' if launch else 'error: '}{where}{exc.strerror}"
                f"{_OS_HINTS.get(exc.errno or 0, '')}"]
    if not isinstance(exc, EnvbuildError):
        return [f"{'refused: ' if launch else 'error: '}internal error: {exc!r}"]
    if launch and isinstance(exc, (CommandNotExecutable, CommandNotFound)):
        return [str(exc)]
    prefix = "refused: " if launch else "error: "
    lines = [prefix + line for line in (str(exc).splitlines() or [type(exc).__name__])]
    if isinstance(exc, UsageError) and exc.usage:
        lines.append(exc.usage)
    return lines


def report(exc: BaseException, prog: str, launch: bool = False) -> int:
    """Write the error's message on stderr, each line under `prog`; return its exit code.

    Every entry point (the typer CLI, the fast CLI, the guard, the hook) ends here.
    """
    sys.stderr.write("".join(f"{prog}: {line}\n" if not line.startswith("usage:") else
                             f"{line}\n" for line in message_lines(exc, launch)))
    return exit_status(exc, launch)
