"""The code blocks and links of the README and the pages under docs/, as a reader meets them.

Every fenced block carries a marker on the line above it, ``<!-- snippet: NAME -->`` (an HTML
comment, invisible where the Markdown is rendered), so a test can find a block by name and run it
exactly as written. A block without one is an error: nothing a reader may copy goes untested.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def documents() -> tuple[Path, ...]:
    """The README and every page under docs/: a new page is read without being named here."""
    return (README, *sorted(DOCS.glob("*.md")))


DOCUMENTS = documents()

MARKER = re.compile(r"^<!-- snippet: ([a-z0-9-]+) -->$")
FENCE = re.compile(r"^```([a-z]*)\s*$")
#: An inline link or image, ``[text](target)`` or ``[text](target "title")``.
LINK = re.compile(r"!?\[(?:[^\]`]|`[^`]*`)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@dataclass(frozen=True)
class Snippet:
    name: str
    language: str
    text: str
    where: str  # file:line, for messages
    document: str  # the file it lives in, relative to the project (README.md, docs/upstream.md)

    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Blocks:
    snippets: dict[str, Snippet]
    unmarked: list[str]  # file:line of blocks without a marker
    duplicates: list[str]


def read_blocks(documents: tuple[Path, ...] = DOCUMENTS) -> Blocks:
    snippets: dict[str, Snippet] = {}
    unmarked: list[str] = []
    duplicates: list[str] = []
    for path in documents:
        lines = path.read_text().splitlines()
        document = str(path.relative_to(ROOT))
        i = 0
        while i < len(lines):
            fence = FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            start = i
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            where = f"{document}:{start + 1}"
            marker = MARKER.match(lines[start - 1]) if start else None
            if marker is None:
                unmarked.append(where)
            elif marker[1] in snippets:
                duplicates.append(f"{marker[1]} ({where}, first at {snippets[marker[1]].where})")
            else:
                text = "\n".join(lines[start + 1 : end]) + "\n"
                snippets[marker[1]] = Snippet(marker[1], fence[1], text, where, document)
            i = end + 1
    return Blocks(snippets, unmarked, duplicates)


def prose(text: str) -> list[tuple[int, str]]:
    """The document's lines outside fenced code blocks, with their line numbers (a ``#`` in a
    shell block is a comment, not a heading)."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            found.append((number, line))
    return found


def table_rows(path: Path, heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under ``heading``, header and rule left out."""
    lines = path.read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if line.strip() == heading)
    rows: list[list[str]] = []
    for line in lines[at + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    return [row for row in rows[2:]]


def section(path: Path, heading: str) -> str:
    """The text under ``heading`` (a whole line, ``## Alerts``) up to the next heading of its level or higher."""
    text = path.read_text()
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n") + 1
    after = re.search(rf"^#{{1,{level}}} ", text[start + len(heading) :], flags=re.M)
    return text[start : start + len(heading) + after.start()] if after else text[start:]


def anchors(text: str) -> set[str]:
    """The link targets of a Markdown document's headings, as GitHub makes them (``#offersstuck``;
    a repeated heading's second anchor gets ``-1``)."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in prose(text):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading[1].lower().replace("`", "")).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
            seen[slug] += 1
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """Each inline link's target in the document's prose (code spans left out), with its line; a
    link's text may wrap onto the next line, as a paragraph's does."""
    lines = path.read_text().splitlines()
    kept = dict(prose("\n".join(lines)))
    text = "\n".join(kept.get(number, "") for number in range(1, len(lines) + 1))
    found = []
    for paragraph in re.finditer(r"(?:[^\n]+\n?)+", text):
        body = re.sub(r"`[^`]*`", lambda span: "``" + "\n" * span[0].count("\n"), paragraph[0])
        first = text.count("\n", 0, paragraph.start()) + 1
        for link in LINK.finditer(body):
            found.append((first + body.count("\n", 0, link.start()), link[1]))
    return found
