"""Text from outside (the network, the database, the user) made safe to print, log and store.

Rules:
- Everything that did not come from this program (API strings such as workflow names and error
  messages, paths, option values, database contents) is shown as text, never as rich markup.
- Control characters are replaced with U+FFFD before they reach a terminal, a log or the store:
  C0 (but tab; a newline too unless the text may span lines), DEL, C1, the bidirectional
  overrides and isolates that can make a line read differently from what it holds, and lone
  surrogates (valid in a Python str, not encodable as UTF-8). So an API string can neither move
  the cursor, retitle the window, nor hide text, wherever it ends up.
- `clean` makes any value one line of at most `limit` characters, an ellipsis marking a cut;
  bytes are decoded as UTF-8 with undecodable bytes replaced.
Pure functions, no I/O.
"""

from __future__ import annotations

import re

from rich.text import Text

REPLACEMENT = "\ufffd"
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_SURROGATE_RANGE = "\ud800-\udfff"  # lone ones cannot even be encoded for the terminal
_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}{_SURROGATE_RANGE}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}{_SURROGATE_RANGE}]")
_SURROGATES = re.compile(f"[{_SURROGATE_RANGE}]")


def safe_text(value: object, *, multiline: bool = False) -> str:
    """`value` as a string with every control character replaced; one line unless `multiline`."""
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE_BUT_NEWLINE if multiline else _UNSAFE).sub(REPLACEMENT, text)


def plain(value: object, style: str = "") -> Text:
    """A rich Text for `value`: printed as written (markup is not parsed), control characters replaced."""
    return Text(safe_text(value), style=style)


def without_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD: encodable as UTF-8, otherwise unchanged."""
    return text if text.isascii() else _SURROGATES.sub(REPLACEMENT, text)


def clean(value: object, limit: int = 300) -> str:
    """One line of printable, encodable text of at most `limit` characters."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 4]).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return safe_text(text)
