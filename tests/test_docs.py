"""The README and docs/ stay honest: short, generated where they can drift, no dead links."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from circleci_ds.inputs.fixture import load_fixture
from circleci_ds.metrics import definitions

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# Pages the README links to that land with other work; drop a name once its file is in docs/.
LANDING_LATER = frozenset(
    set()
)

# [text](target) outside code; the target up to a space, ')' or '#'
LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]*)(#[^)\s]*)?\)")


def _markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _without_code_blocks(page: Path) -> str:
    return re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)


def _links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_without_code_blocks(page)) if m.group(1)]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.+)$", _without_code_blocks(page), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_docs_metrics_is_the_text_generated_from_the_definitions() -> None:
    # Regenerate with: python -m circleci_ds.metrics.definitions > docs/metrics.md
    assert (DOCS / "metrics.md").read_text(encoding="utf-8") == definitions.markdown()


def test_the_generator_runs_as_a_module_and_prints_the_same_text() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "circleci_ds.metrics.definitions"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == definitions.markdown()
    assert all(f"(`{d.key}`)" in printed for d in definitions.DEFINITIONS)


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) < 25_000
    lines = text.splitlines()
    assert lines[0] == "# circleci-ds"
    assert lines[2].endswith("`pip install -e . && circleci-ds demo`")
    assert lines[3] == "- **Test**: `pip install -e '.[test]' && python -m pytest`"
    assert max(len(line) for line in lines) <= 200


def test_every_link_to_a_file_of_the_repository_resolves() -> None:
    checked = 0
    for page in _markdown_pages():
        for target in _links(page):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            checked += 1
    assert checked >= 10


def test_every_anchor_into_a_page_of_docs_names_one_of_its_headings() -> None:
    checked = 0
    for page in _markdown_pages():
        for match in LINK.finditer(_without_code_blocks(page)):
            target, anchor = match.group(1) or page.name, match.group(2)
            path = (page.parent / target).resolve()
            if anchor and path.exists() and path.suffix == ".md":
                assert anchor[1:] in _anchors(path), f"{page.relative_to(ROOT)}: {target}{anchor}"
                checked += 1
    assert checked >= 3


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {Path(t).name for t in _links(README) if t.startswith("docs/")}
    pages = {p.name for p in DOCS.glob("*.md")}
    assert pages <= linked, f"pages of docs/ the README does not link: {sorted(pages - linked)}"


def test_every_page_of_docs_opens_with_a_title_and_a_paragraph_on_what_it_covers() -> None:
    for page in DOCS.glob("*.md"):
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), page.name
        assert lines[1] == "" and lines[2] and not lines[2].startswith(("#", "-", "|", "`")), page.name


def test_the_fixtures_shown_in_the_readme_and_the_docs_load(tmp_path: Path) -> None:
    environ = {"CIRCLE_TOKEN": "t" * 40, "CIRCLE_TOKEN_STACKSTORM": "s" * 40}
    for page in (README, DOCS / "collection.md"):
        block = re.search(r"```yaml\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        assert block, page.name
        fixture = tmp_path / "fixture.yaml"
        fixture.write_text(textwrap.dedent(block.group(1)), encoding="utf-8")
        settings = load_fixture(fixture, environ)
        assert settings.endpoints and settings.token in environ.values(), page.name
