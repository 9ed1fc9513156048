"""Small readers for the launch path, which imports only the stdlib.

Everywhere else `packaging` does this; tests check these against it on the same inputs.
"""

from __future__ import annotations


def normalize(name: str) -> str:
    """PEP 503 normalized project name (without `re`, which costs milliseconds to import)."""
    out: list[str] = []
    for ch in name.lower():
        if ch in "-_.":
            if not out or out[-1] != "-":
                out.append("-")
        else:
            out.append(ch)
    return "".join(out)


def parse_dist_info(dirname: str) -> tuple[str, str] | None:
    """(normalized name, version) from `name-version.dist-info`, None for anything else.

    Dist-info names escape '-' in the project name to '_', so the first '-' splits them.
    """
    if not dirname.endswith(".dist-info"):
        return None
    name, sep, version = dirname[: -len(".dist-info")].partition("-")
    if not sep or not name or not version:
        return None
    return normalize(name), version


def escape(value: str) -> str:
    """One field of a tab-separated sidecar line: backslash, tab and newline escaped."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append({"t": "\t", "n": "\n"}.get(nxt, nxt))
        else:
            out.append(ch)
    return "".join(out)
