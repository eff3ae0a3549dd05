"""Untrusted text made safe to print, log and store (circleci_ds.text)."""

from __future__ import annotations

import pytest

from circleci_ds.text import clean, without_surrogates


@pytest.mark.parametrize(
    "unsafe", ["\x1b", "\x00", "\n", "\r", "\x7f", "\x9b", "\u202e", "\u2066", "\ud800", "\udfff"]
)
def test_control_bidi_and_surrogate_characters_are_replaced(unsafe: str) -> None:
    assert clean(f"a{unsafe}b") == "a\ufffdb"
    clean(f"a{unsafe}b").encode("utf-8")  # always encodable


def test_clean_text_keeps_printable_text_as_is() -> None:
    assert clean("déjà vu [bold]x[/] 🚀") == "déjà vu [bold]x[/] 🚀"


def test_clean_text_is_bounded() -> None:
    assert clean("x" * 10_000, limit=50) == "x" * 49 + "…"
    assert len(clean("\x1b" * 10_000, limit=50)) == 50


def test_bytes_and_other_values_become_text() -> None:
    assert clean(b"ok \xff\xfe") == "ok \ufffd\ufffd"
    assert clean(None) == "None"


def test_without_surrogates_keeps_everything_else() -> None:
    assert without_surrogates("a\ud800\x1bé") == "a\ufffd\x1bé"
    assert without_surrogates("plain") == "plain"
