"""packaging's answers about a recipe's strings (and pip's version), remembered per host:
a build of a recipe seen before imports none of packaging's parsers, whose imports, and the
patterns they compile, cost a cache hit milliseconds. Keyed by the question and packaging's
version, in the host cache (`host.cached`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any


def by_packaging(kind: str, subject: Any, answer: Callable[[], str], good: str | None = None
                 ) -> str:
    """`answer()`, packaging's reading of `subject` (JSON-able), remembered where it is
    `good` (None: any answer): a refusal is worked out again every time."""
    import packaging

    from .host import cached, remember

    key = json.dumps([packaging.__version__, subject])
    name = f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    value = cached(name, key)
    if value is not None and (good is None or value == good):
        return value
    value = answer()
    if good is None or value == good:
        remember(name, key, value)
    return value
