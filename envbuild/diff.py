"""`envbuild diff A B`: how two environments differ, in DESIGN's difference kinds, with A's
value as `expected` and B's as `found`, printed `KIND: SUBJECT: A -> B`.

Two manifests are compared field by field (distributions, interpreter, host needs, the
environment contract, the launch policy, the inputs). A run record or a `verify --json`
report adds what a verification found on its machine (relative to its manifest) and, for
a record, the environment the run had; so a record against an env says whether the run was
made from that env and, if not, what was different.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .diffinputs import Side, load_side
from .manifest import Manifest
from .verify import Difference

ABSENT = "absent"
# the order of the groups in the output; a kind not here comes last
ORDER = ("manifest", "interpreter", "version", "modified", "added", "missing", "host",
         "environment", "permissions")

__all__ = ["DiffResult", "diff", "compare", "load_side", "line"]


@dataclass
class DiffResult:
    a: Side
    b: Side
    differences: list[Difference]
    files: list[tuple[str, list[Difference]]] = field(default_factory=list)  # per distribution

    @property
    def same(self) -> bool:
        return not self.differences and not self.files

    def all_differences(self) -> list[Difference]:
        return self.differences + [d for _, diffs in self.files for d in diffs]

    def lines(self) -> list[str]:
        out = [line(d) for d in self.differences]
        for owner, diffs in self.files:
            counts: dict[str, int] = {}
            for d in diffs:
                counts[d.kind] = counts.get(d.kind, 0) + 1
            out.append(f"{owner}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
            out += [f"  {line(d)}" for d in diffs]
        return out


def line(d: Difference) -> str:
    """`KIND: SUBJECT: A -> B`; a side that lacks it is left out (`added: docopt: 0.6.2`)."""
    if d.expected == ABSENT:
        return f"{d.kind}: {d.subject}: {d.found}"
    if d.found == ABSENT:
        return f"{d.kind}: {d.subject}: {d.expected}"
    return f"{d.kind}: {d.subject}: {d.expected} -> {d.found}"


def diff(a: str, b: str, files: bool = False) -> DiffResult:
    """Compare the two inputs `a` and `b` name (see `diffinputs.load_side`)."""
    side_a, side_b = load_side(a), load_side(b)
    result = DiffResult(side_a, side_b, compare(side_a, side_b))
    if files:
        from .difffiles import file_changes

        result.files = file_changes(side_a, side_b)
    return result


def compare(a: Side, b: Side) -> list[Difference]:
    """Every difference between two sides, grouped by kind in ORDER and sorted."""
    diffs: list[Difference] = []
    if a.digest and b.digest and a.digest != b.digest:
        diffs.append(Difference("manifest", "digest", a.digest, b.digest))
    elif (a.digest is None) != (b.digest is None):
        diffs.append(Difference("manifest", "digest", a.digest or "unknown",
                                b.digest or "unknown"))
    if a.manifest is not None and b.manifest is not None and a.digest != b.digest:
        diffs += compare_manifests(a.manifest, b.manifest)
    diffs += _observed(a, b)
    diffs += _environments(a, b)
    rank = {kind: i for i, kind in enumerate(ORDER)}
    unique = {(d.kind, d.subject): d for d in diffs}
    return sorted(unique.values(), key=lambda d: (rank.get(d.kind, len(ORDER)), d.subject))


def compare_manifests(a: Manifest, b: Manifest) -> list[Difference]:
    diffs = _distributions(a, b)
    ia, ib = a.interpreter._asdict(), b.interpreter._asdict()
    for key in sorted(ia):
        if ia[key] != ib[key]:
            diffs.append(Difference("interpreter", key, _show(ia[key]), _show(ib[key])))
    diffs += _host(a, b)
    ea, eb = a.environment, b.environment
    diffs += _mapping("environment", "set ", ea.set, eb.set)
    diffs += _mapping("environment", "require ", dict.fromkeys(ea.require, "required"),
                      dict.fromkeys(eb.require, "required"))
    diffs += _mapping("environment", "unset ", dict.fromkeys(ea.unset, "removed"),
                      dict.fromkeys(eb.unset, "removed"))
    la, lb = a.launch._asdict(), b.launch._asdict()
    diffs += [Difference("manifest", f"launch.{k}", _show(la[k]), _show(lb[k]))
              for k in sorted(la) if la[k] != lb[k]]
    for key in ("name", "schema"):
        if getattr(a, key) != getattr(b, key):
            diffs.append(Difference("manifest", key, getattr(a, key), getattr(b, key)))
    diffs += _mapping("manifest", "inputs.", a.inputs, b.inputs)
    return diffs


def _distributions(a: Manifest, b: Manifest) -> list[Difference]:
    da = {d.name: d for d in a.distributions}
    db = {d.name: d for d in b.distributions}
    diffs = [Difference("missing", n, da[n].version, ABSENT) for n in sorted(da.keys() - db)]
    diffs += [Difference("added", n, ABSENT, db[n].version) for n in sorted(db.keys() - da)]
    for name in sorted(da.keys() & db.keys()):
        x, y = da[name], db[name]
        if x.version != y.version:
            diffs.append(Difference("version", name, x.version, y.version))
        elif x.sha256 != y.sha256:
            shown = (x.sha256, y.sha256) if x.artifact == y.artifact else \
                (f"{x.artifact} {x.sha256}", f"{y.artifact} {y.sha256}")
            diffs.append(Difference("modified", f"{name} {x.version} artifact", *shown))
    return diffs


def _host(a: Manifest, b: Manifest) -> list[Difference]:
    """Host needs: glibc, sonames and symbol versions needed or no longer needed."""
    ha, hb = a.host, b.host
    diffs = []
    if ha.glibc != hb.glibc:
        diffs.append(Difference("host", "glibc", ha.glibc or "none", hb.glibc or "none"))
    diffs += _mapping("host", "", dict.fromkeys(ha.libraries, "needed"),
                      dict.fromkeys(hb.libraries, "needed"))
    va = {f"{so} {v}": "needed" for so, vs in ha.versions.items() for v in vs}
    vb = {f"{so} {v}": "needed" for so, vs in hb.versions.items() for v in vs}
    diffs += _mapping("host", "", va, vb)
    diffs += _mapping("host", "optional ", dict.fromkeys(a.host_optional, "optional"),
                      dict.fromkeys(b.host_optional, "optional"))
    return diffs


def _mapping(kind: str, prefix: str, a: Mapping[str, str], b: Mapping[str, str]
             ) -> list[Difference]:
    return [Difference(kind, prefix + key, a.get(key, ABSENT), b.get(key, ABSENT))
            for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]


def _show(value: object) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items()))
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _observed(a: Side, b: Side) -> list[Difference]:
    """What verifications found: a difference found on one side's machine is the
    manifest's value (`expected`) on the other side, unless that side found one too."""
    oa = {(d.kind, d.subject): d for d in a.observed or []}
    ob = {(d.kind, d.subject): d for d in b.observed or []}
    diffs = []
    for key in sorted(oa.keys() | ob.keys()):
        x, y = oa.get(key), ob.get(key)
        seen_a = x.found if x else (y.expected if y else "")
        seen_b = y.found if y else (x.expected if x else "")
        if seen_a != seen_b:
            diffs.append(Difference(key[0], key[1], seen_a, seen_b))
    return diffs


def _environments(a: Side, b: Side) -> list[Difference]:
    """Two runs' environments name by name; a run's environment against an env's contract:
    required variables unset, removed ones present, defaults overridden."""
    if a.environment is not None and b.environment is not None:
        return _mapping("environment", "", a.environment, b.environment)
    # A's value is `expected`: a run on A's side goes into `expected` after the flip
    run, other, flip = (a, b, True) if a.environment is not None else (b, a, False)
    if run.environment is None or other.manifest is None:
        return []
    env, contract = run.environment, other.manifest.environment
    diffs = [Difference("environment", name, "required", "unset")
             for name in contract.require if name not in env]
    diffs += [Difference("environment", name, "removed", env[name])
              for name in contract.unset if name in env]
    diffs += [Difference("environment", name, value, env.get(name, "unset"))
              for name, value in contract.set.items() if env.get(name) != value]
    if flip:
        diffs = [Difference(d.kind, d.subject, d.found, d.expected) for d in diffs]
    return diffs
