"""pip's console-script body, as the pip beside envbuild writes it (the one `--installer pip`
runs), so that the trees installer writes the same bytes.

pip has changed it twice: up to 25.1 it took its vendored distlib's template (which imports
`re`), 25.2 gave pip its own, and 26.0 shortened that one. Each body has a short style name,
which is part of a tree's dir name and of the trees installer's identity in `env_key`: a
store keeps the trees of each style apart, and an env's key changes with the bytes.
"""

from __future__ import annotations

from functools import cache

from .memo import by_packaging

# (the first pip version that writes it, its style name, the body), newest first
_BODIES = (
    ("26.0", "s3", """\
import sys
from {module} import {import_name}
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit({func}())
"""),
    ("25.2", "s2", """\
import sys
from {module} import {import_name}
if __name__ == '__main__':
    if sys.argv[0].endswith('.exe'):
        sys.argv[0] = sys.argv[0][:-4]
    sys.exit({func}())
"""),
    ("0", "s1", """\
# -*- coding: utf-8 -*-
import re
import sys
from {module} import {import_name}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({func}())
"""),
)


def body_for(pip_version: str) -> tuple[str, str]:
    """The style name and the console-script body (a `str.format` template with `module`,
    `import_name` and `func`) that pip `pip_version` writes (packaging's comparison of the
    versions remembered per host: `memo`)."""
    # the question is asked of this table: another envbuild's table is another question
    table = [[first, style] for first, style, _body in _BODIES]
    style = by_packaging("pip-style", [pip_version, table], lambda: _style(pip_version))
    return next((style, body) for _first, name, body in _BODIES if name == style)


def _style(pip_version: str) -> str:
    from packaging.version import Version

    version = Version(pip_version)
    return next(style for first, style, _body in _BODIES if version >= Version(first))


@cache
def pip_body() -> tuple[str, str]:
    """`body_for` the pip beside envbuild (its `__version__`: importing pip's top module is
    cheap, unlike its installer)."""
    import pip

    return body_for(pip.__version__)


def pip_style() -> str:
    """The style name of the pip beside envbuild's console scripts."""
    return pip_body()[0]
