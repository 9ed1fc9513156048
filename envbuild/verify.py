"""Verifying an env against its manifest at three levels. Stdlib only, and cheap to import:
the guard inside every env and image runs this with `python -I -S`.

quick (`verify_quick`): what runs before the program's first line, from the quick sidecar.
files and full (`verify_files`): every path, and with full every byte. The sidecars are
bound to the manifest by digest, so editing one is a difference, never a way around one.
"""

from __future__ import annotations

import os

from .hashing import sha256_bytes
from .layout import MANIFEST, QUICK
from .sidecars import QUICK_SCHEMA, read_manifest_bytes, read_quick
from .verify_quick import check_quick
from .verify_report import Difference, Report, bound_sidecar, trusted_owners

LEVELS = ("quick", "files", "full")

__all__ = ["Difference", "Report", "verify", "LEVELS"]


def verify(env: str, level: str = "quick", expect: str | None = None,
           trusted_uids: tuple[int, ...] = (), environ: dict[str, str] | None = None,
           contract: bool = True) -> Report:
    """Compare the env at `env` with its manifest; raise NotAnEnvError if it is not one.

    `contract=False` leaves out the launch contract's required variables: the interpreter
    start hook checks the env, not how a program was launched.
    """
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {', '.join(LEVELS)}, found {level!r}")
    env = os.path.abspath(env)
    manifest = read_manifest_bytes(env)
    digest = sha256_bytes(manifest)
    diffs: list[Difference] = []
    if expect is not None and expect != digest:
        diffs.append(Difference("manifest", MANIFEST, expect, digest))
    quick = bound_sidecar(env, manifest, QUICK, b'"quick":"', diffs)
    records: dict[str, list[list[str]]] = {}
    if quick is not None:
        try:
            records = read_quick(quick.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            diffs.append(Difference("manifest", QUICK, QUICK_SCHEMA, f"unreadable ({exc})"))
    trusted = trusted_owners(env, trusted_uids)
    if records:
        check_quick(env, records, trusted,
                    (os.environ if environ is None else environ) if contract else None, diffs)
    if level != "quick":
        from .verify_files import check_files

        check_files(env, manifest, level == "full", trusted, diffs)
        # the files level sees again what quick saw in the paths both read
        diffs = list({(d.kind, d.subject): d for d in diffs}.values())
    return Report(env, level, digest, diffs, records)
