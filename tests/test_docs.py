"""The docs: README short, each fact written once, links that resolve, references complete."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from mldropd import config_docs
from mldropd.settings import describe, describe_sections

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
MIN_PARAGRAPH = 120  # shorter lines (a one-line pointer, a caption) may be said twice
README_MAX_LINES = 250


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs and list items, whitespace-normalised; no code, headings or tables."""
    block: list[str] = []
    fence = comment = False
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        boundary = (
            fence
            or comment
            or not stripped
            or stripped.startswith(("#", "|", "```", "<!--", "!["))
            or re.match(r"([-*]|\d+\.) ", stripped) is not None
        )
        if boundary and block:
            yield " ".join(block)
            block = []
        if stripped.startswith("```"):
            fence = not fence
        elif stripped.startswith("<!--") or comment:
            comment = "-->" not in stripped
        elif not fence and stripped and not stripped.startswith(("#", "|", "![")):
            block.append(re.sub(r"^([-*]|\d+\.) ", "", stripped))


def test_paragraphs_ignores_code_tables_and_headings() -> None:
    text = "# A\n\none\ntwo\n\n```\ncode\n```\n| a | b |\n- item one\n  more\n- item two\n"
    assert list(paragraphs(text)) == ["one two", "item one more", "item two"]


def test_no_paragraph_is_written_twice() -> None:
    seen: dict[str, str] = {}
    repeated = []
    for page in PAGES:
        for paragraph in paragraphs(page.read_text()):
            if len(paragraph) < MIN_PARAGRAPH:
                continue
            if paragraph in seen and seen[paragraph] != _name(page):
                repeated.append(f"{seen[paragraph]} and {_name(page)}: {paragraph[:100]}...")
            seen.setdefault(paragraph, _name(page))
    assert not repeated, (
        "these paragraphs are written twice; keep each in the one page of its topic and link to "
        "it from the other:\n" + "\n".join(repeated)
    )


def test_readme_stays_short() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): it is the pitch, the quick "
        "start and the links; put reference text into the docs/ page of its topic"
    )


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fence = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.+)", line)):
            found.add(slug(m.group(1)))
    return found


def test_slug_matches_github() -> None:
    assert slug('Feature source `kind = "spark_table"`') == "feature-source-kind--spark_table"
    assert slug("The static scan: a tripwire, not the wall") == (
        "the-static-scan-a-tripwire-not-the-wall"
    )
    assert slug("Memory while receiving a large model (`bench/upload_rss.py`)") == (
        "memory-while-receiving-a-large-model-benchupload_rsspy"
    )


def test_links_resolve() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{_name(page)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{_name(page)}: {target} (no heading with that anchor)")
    assert not broken, "broken links in the docs:\n" + "\n".join(broken)


def test_configuration_page_is_generated_from_the_settings() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"[{s}] {k}" for s, k, _, _ in describe() if f"| `{k}` |" not in page]
    assert not missing, f"docs/configuration.md lacks {missing}: run `make docs`"
    assert page == config_docs.render(), (
        "docs/configuration.md differs from the settings declarations: run `make docs` "
        "(python -m mldropd.config_docs > docs/configuration.md) and commit the result"
    )


def test_every_settings_section_says_what_it_is_for() -> None:
    undescribed = [name for name, text in describe_sections().items() if not text]
    assert not undescribed, (
        f"settings sections without a description: {undescribed}; give each section's class in "
        "mldropd/settings.py a one-line docstring (docs/configuration.md shows it)"
    )


def _commands(group: click.Group, prefix: str = "mldropd") -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}"


def test_every_command_is_in_the_cli_page() -> None:
    from mldropd.cli import main

    page = (ROOT / "docs" / "cli.md").read_text()
    missing = sorted(c for c in _commands(main) if f"`{c}" not in page)
    assert not missing, f"docs/cli.md does not document {missing}: add a row for each"


def _route_key(method: str, path: str) -> str:
    """`GET /api/v1/models/{model_id:int}` and `GET /api/v1/models/{id}` are the same route."""
    return method + " " + re.sub(r"\{[^}]*\}", "{}", path.split("?")[0])


@pytest.fixture
def api_routes(app: Any) -> set[str]:
    return {
        _route_key(method, route.path)
        for route in app.routes
        if route.path.startswith("/api/")
        for method in getattr(route, "methods", ())
        if method not in ("HEAD", "OPTIONS")
    }


def test_every_api_route_is_in_the_api_page(api_routes: set[str]) -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    documented = {
        _route_key(m, p) for m, p in re.findall(r"`(GET|POST|PATCH|PUT|DELETE) (/[^`\s]+)", page)
    }
    assert api_routes - documented == set(), (
        f"docs/api.md has no row for {sorted(api_routes - documented)}: add one for each route"
    )
    stale = {k for k in documented if k.split()[1].startswith("/api/")} - api_routes
    assert not stale, f"docs/api.md documents routes that do not exist: {sorted(stale)}"
