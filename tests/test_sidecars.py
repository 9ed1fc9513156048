"""sidecars: the launch path's stdlib-only name readers agree with `packaging` on the same
inputs; fields escape and unescape back."""

from __future__ import annotations

import random

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from envbuild.sidecars import escape, normalize, parse_dist_info, unescape

NAMES = [
    "Foo_Bar", "foo..bar", "a-_-b", "ZOPE.interface", "_x", "x_", "-x-", ".x.", "x",
    "requests", "Django", "typing_extensions", "typing-extensions", "Typing.Extensions",
    "ruamel.yaml", "ruamel.yaml.clib", "backports.zoneinfo", "jaraco.text",
    "pyOpenSSL", "PySocks", "charset_normalizer", "a__b", "a--b", "a..b", "a-.-_.b",
    "A1_B2.C3-D4", "0x", "9", "__init__", "Ǆemo", "ÄÖÜ_pkg", "", "-", "_._",
]


@pytest.mark.parametrize("name", NAMES)
def test_normalize_equals_packaging(name: str) -> None:
    assert normalize(name) == canonicalize_name(name)


def test_normalize_equals_packaging_on_generated_names() -> None:
    rng = random.Random(20240601)
    alphabet = "aZ9-_.xY"
    for _ in range(5000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        assert normalize(name) == canonicalize_name(name), name


DIST_INFOS = [
    # (project name as published, version as published)
    ("Foo_Bar", "1.0"),
    ("zope.interface", "5.4.0"),
    ("ZOPE.interface", "6.0"),
    ("typing_extensions", "4.16.0"),
    ("charset-normalizer", "3.5.2"),
    ("PySocks", "1.7.1"),
    ("ruamel.yaml.clib", "0.2.8"),
    ("Ab-c.D", "2!1.0.post3.dev4"),
    ("x", "1.0+local.build.7"),
    ("numpy", "2.4.6rc1"),
    ("certifi", "2026.10.18"),
]


def _escaped(project: str) -> str:
    """How installers spell the name in `NAME-VERSION.dist-info` (wheel spec escaping)."""
    return canonicalize_name(project).replace("-", "_")


@pytest.mark.parametrize("project,version", DIST_INFOS)
@pytest.mark.parametrize("spelling", ["escaped", "as-published-dots-kept"])
def test_parse_dist_info_agrees_with_packaging(project: str, version: str,
                                               spelling: str) -> None:
    stem_name = _escaped(project) if spelling == "escaped" else project.replace("-", "_")
    dirname = f"{stem_name}-{version}.dist-info"
    parsed = parse_dist_info(dirname)
    assert parsed is not None, dirname
    # the same NAME-VERSION stem, read by packaging as a wheel file name
    ref_name, ref_version, _, _ = parse_wheel_filename(
        f"{stem_name}-{version}-py3-none-any.whl")
    assert parsed[0] == ref_name == canonicalize_name(project)
    assert Version(parsed[1]) == ref_version == Version(version)
    assert parsed[1] == version


@pytest.mark.parametrize("dirname", [
    "foo-1.0.egg-info", "foo.dist-info", "foo-.dist-info", "-1.0.dist-info",
    "__pycache__", "foo-1.0", "foo-1.0.dist-info.bak", ".dist-info", "foo-1.0.DIST-INFO",
])
def test_parse_dist_info_rejects_other_names(dirname: str) -> None:
    assert parse_dist_info(dirname) is None


ESCAPE_SAMPLES = [
    "", "plain", "tab\there", "new\nline", "back\\slash", "\\t literal", "\\n literal",
    "trailing\\", "\\", "\\\\", "\t", "\n", "\t\n\\", "a\\tb\tc\\nd\ne", "ümlaut\tλ\n☃",
    "carriage\rreturn", "nul\x00byte", "site-packages/pkg/__init__.py",
]


@pytest.mark.parametrize("value", ESCAPE_SAMPLES)
def test_escape_round_trip(value: str) -> None:
    escaped = escape(value)
    assert "\t" not in escaped and "\n" not in escaped
    assert unescape(escaped) == value


def test_escape_round_trip_generated() -> None:
    rng = random.Random(7)
    alphabet = ["a", "\\", "\t", "\n", "t", "n", "é", " "]
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        escaped = escape(value)
        assert "\t" not in escaped and "\n" not in escaped, repr(value)
        assert unescape(escaped) == value, repr(value)


def test_escaped_fields_split_on_tabs() -> None:
    """The reason for escaping: a sidecar line splits back into the same fields."""
    fields = ["path\twith tab", "0o644", "line\nbreak\\", ""]
    line = "\t".join(escape(f) for f in fields)
    assert "\n" not in line
    assert [unescape(f) for f in line.split("\t")] == fields
