"""`envbuild build` as a user runs it: an env from the store only if it still matches its
manifest, else built again. Here the level checker meets the build, which never imports it:
the build takes the check as a function."""

from __future__ import annotations

from pathlib import Path

from .build import BuildResult, Progress, build
from .errors import UsageError
from .verify import LEVELS, verify

# What a build cannot repair: the host's libraries and the caller's environment.
_NOT_DAMAGE = ("host", "environment")


def damage(env: Path, level: str) -> list[str]:
    """The differences of the env at `env` from its manifest that a new build would repair,
    one line each (none: it is intact)."""
    report = verify(str(env), level=level, contract=False)
    return [d.line() for d in report.differences if d.kind not in _NOT_DAMAGE]


def build_or_reuse(recipe: Path, store: Path | None = None, python: str | None = None,
                   offline: bool = False, force: bool = False, level: str = "files",
                   progress: Progress = lambda _msg: None, link: str | None = None,
                   installer: str = "trees") -> BuildResult:
    """The env of `recipe`'s lock: reused when it verifies at `level` (files by default,
    full on request), moved aside and built again when it does not; `force` builds again."""
    if level not in LEVELS[1:]:
        raise UsageError(f"--verify: expected files or full, found {level!r}")
    return build(recipe, store_dir=store, python=python, offline=offline, progress=progress,
                 check=lambda env: damage(env, level), force=force, link=link,
                 installer=installer)
