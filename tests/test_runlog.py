"""runlog: the launch path's own JSON writer agrees with `json` on the same values."""

from __future__ import annotations

import json
import random

from envbuild.runlog import to_json

CHARS = [chr(i) for i in range(0x300)] + ["\ud800", "\udfff", "\u2028", "\u00a0", "\ufeff",
                                          "\U0001f600", '"', "\\"]


def test_to_json_reads_back_as_json_would() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        text = "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 12)))
        value = {text: [text, 1, None, True, False, {"k": text}]}
        assert json.loads(to_json(value)) == value, repr(text)


def test_plain_strings_are_written_as_they_are() -> None:
    assert to_json("/usr/bin:/bin") == '"/usr/bin:/bin"'
    assert to_json("é ü") == '"é ü"'
    assert to_json('a"b\\c\n') == '"a\\"b\\\\c\\n"'
