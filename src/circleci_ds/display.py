"""Showing external text on a terminal: the one place that makes a string safe to print.

Rules:
- Everything that did not come from this program (API strings such as workflow names and error
  messages, paths, option values, database contents) is shown as text, never as rich markup.
- Control characters are replaced with U+FFFD before they reach a terminal: C0 (but tab; a
  newline too unless the text may span lines), DEL, C1, and the bidirectional overrides and
  isolates that can make a line read differently from what it holds, and lone surrogates. So an API string can
  neither move the cursor, retitle the window, nor hide text.
"""

from __future__ import annotations

import re

from rich.text import Text

REPLACEMENT = "\ufffd"
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_SURROGATES = "\ud800-\udfff"  # lone ones cannot even be encoded for the terminal
_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}{_SURROGATES}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}{_SURROGATES}]")


def safe_text(value: object, *, multiline: bool = False) -> str:
    """`value` as a string with every control character replaced; one line unless `multiline`."""
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE_BUT_NEWLINE if multiline else _UNSAFE).sub(REPLACEMENT, text)


def plain(value: object, style: str = "") -> Text:
    """A rich Text for `value`: printed as written (markup is not parsed), control characters replaced."""
    return Text(safe_text(value), style=style)
