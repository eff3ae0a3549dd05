"""Text from outside (the network, the database) made safe to put in messages, logs and the store.

Rules:
- any value becomes a str; bytes are decoded as UTF-8 with undecodable bytes replaced;
- lone surrogates (valid in a Python str, not encodable as UTF-8) become U+FFFD;
- control characters, bidirectional overrides and lone surrogates are replaced as
  `display.safe_text` replaces them for the terminal (one set of unsafe characters, there), so a
  message cannot move the cursor, clear a screen or reorder what is shown, wherever it ends up;
- the result is one line of at most `limit` characters, an ellipsis marking a cut.
Pure functions, no I/O.
"""

from __future__ import annotations

import re

from circleci_ds.display import REPLACEMENT, safe_text

_SURROGATES = re.compile("[\ud800-\udfff]")


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
