"""One exception hierarchy; each class carries the exit code the CLI maps it to."""

from __future__ import annotations


class EnvbuildError(Exception):
    """Base of every error envbuild raises on purpose."""

    exit_code = 1


class InputError(EnvbuildError):
    """Bad input from the user: a recipe, a flag, a lock. Nothing was changed."""

    exit_code = 2


class RecipeError(InputError):
    """The recipe is malformed; `issues` lists every problem, one per line."""

    def __init__(self, path: object, issues: list[str]) -> None:
        self.path = path
        self.issues = issues
        super().__init__("\n".join(f"{path}: {issue}" for issue in issues))


class LockError(InputError):
    """The lock is missing, stale or unreadable."""


class BuildError(EnvbuildError):
    """Building failed after the inputs were accepted."""


class CacheIntegrityError(InputError):
    """A cached artifact no longer matches the lock and cannot be fetched again."""


class ToolError(EnvbuildError):
    """An external tool (pip, pip-compile) failed; carries the tail of its output."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"{argv[0]} exited with {returncode}:\n{tail}")


class NotAnEnvError(InputError):
    """A path that should be an envbuild env is not one."""
