"""What reaches a terminal or a file: safe text, masked database URLs, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from circleci_ds.files import OutputError, write_atomic
from circleci_ds.store.urls import UnsupportedURL, display_url, engine_url, secrets_in
from circleci_ds.text import REPLACEMENT, plain, safe_text

CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0))]
BIDI = ["\u061c", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2069"]


# -- safe text --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("char", CONTROL + BIDI + ["\ud800"])
def test_control_bidi_and_lone_surrogates_are_replaced(char: str) -> None:
    assert safe_text(f"a{char}b") == f"a{REPLACEMENT}b"


def test_tab_stays_and_newlines_stay_only_when_asked() -> None:
    assert safe_text("a\tb\nc") == f"a\tb{REPLACEMENT}c"
    assert safe_text("a\tb\nc", multiline=True) == "a\tb\nc"


@given(st.text())
def test_safe_text_never_holds_a_terminal_control(value: str) -> None:
    shown = safe_text(value)
    assert len(shown) == len(value)
    assert not any(ch in shown for ch in CONTROL + BIDI)
    shown.encode("utf-8")  # printable on any UTF-8 terminal


@pytest.mark.parametrize("value", ["[/x]", "[red]x[/red]", "[bold", "[link=http://evil]x[/link]", "\\[x]"])
def test_markup_is_printed_as_written(value: str) -> None:
    console = Console(file=io.StringIO(), record=True, width=200)
    console.print(plain(value))
    assert console.export_text().rstrip("\n") == value


# -- database URLs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p%40w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@w@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=a&passfile=/p&my_token=t&client_secret=s&PASSWORD=x",
            "postgresql://u@h/db?sslmode=require&sslpassword=***&passfile=***&my_token=***&client_secret=***"
            "&PASSWORD=***",
        ),
        ("sqlite:///relative/file.db", "sqlite:///relative/file.db"),
        ("sqlite:////abs/[x]/file.db", "sqlite:////abs/[x]/file.db"),
        ("u:pw@h/db", "<unparsable database URL>"),
    ],
)
def test_display_url_masks_every_credential_and_keeps_the_rest(url: str, shown: str) -> None:
    assert display_url(url) == shown


def test_secrets_in_a_url_are_found_raw_and_decoded() -> None:
    assert set(secrets_in("postgresql://u:p%40w@h/db?password=a%26b&application_name=x")) == {
        "p%40w",
        "p@w",
        "a&b",
    }


@pytest.mark.parametrize("url", ["mysql://u:pw@h/db", "mysql+pymysql://h/db", "oracle://h", "no-scheme"])
def test_only_sqlite_and_postgresql_are_supported(url: str) -> None:
    with pytest.raises(UnsupportedURL) as info:
        engine_url(url)
    assert "pw" not in str(info.value)


def test_postgresql_means_psycopg_3() -> None:
    assert engine_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"


# -- atomic files ----------------------------------------------------------------------------------------
def test_write_atomic_replaces_the_file_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.html"
    path.write_text("old")
    path.chmod(0o600)
    write_atomic(path, "new")
    assert path.read_text() == "new"
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.html"]


def test_write_atomic_follows_a_symbolic_link(tmp_path: Path) -> None:
    real = tmp_path / "real.html"
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    write_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("dir", "it is a directory"),
        ("/dev/full", "it is not a regular file"),
        ("missing/x", "no such directory"),
    ],
)
def test_write_atomic_refuses_what_is_not_a_file(tmp_path: Path, target: str, reason: str) -> None:
    (tmp_path / "dir").mkdir()
    path = Path(target) if target.startswith("/") else tmp_path / target
    with pytest.raises(OutputError, match=reason):
        write_atomic(path, "x")
    assert Path("/dev/full").is_char_device()
