"""The code blocks of the README and the operations guide, as a reader copies them.

Every fenced block carries a marker on the line above it, ``<!-- snippet: NAME -->`` (an HTML
comment, invisible where the Markdown is rendered), so a test can find a block by name and run it
exactly as written. A block without one is an error: nothing a reader may copy goes untested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "operations.md")

MARKER = re.compile(r"^<!-- snippet: ([a-z0-9-]+) -->$")
FENCE = re.compile(r"^```([a-z]*)\s*$")


@dataclass(frozen=True)
class Snippet:
    name: str
    language: str
    text: str
    where: str  # file:line, for messages

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
        i = 0
        while i < len(lines):
            fence = FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            start = i
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            where = f"{path.relative_to(ROOT)}:{start + 1}"
            marker = MARKER.match(lines[start - 1]) if start else None
            if marker is None:
                unmarked.append(where)
            elif marker[1] in snippets:
                duplicates.append(f"{marker[1]} ({where})")
            else:
                snippets[marker[1]] = Snippet(marker[1], fence[1], "\n".join(lines[start + 1 : end]) + "\n", where)
            i = end + 1
    return Blocks(snippets, unmarked, duplicates)


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


def anchors(text: str) -> set[str]:
    """The link targets of a Markdown document's headings, as GitHub makes them (``#offersstuck``)."""
    found = set()
    for line in text.splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading[1].lower().replace("`", "")).replace(" ", "-")
            found.add(slug)
    return found
