"""The sections of benchmarks/REPORT.md that each benchmark script owns, between its own markers."""

from __future__ import annotations

from pathlib import Path


def write_section(report: Path, begin: str, end: str, block: str, heading: str | None = None) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the report's
    section between those markers; without one yet, append it at the end under `heading`."""
    text = report.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        title = f"## {heading}\n\n" if heading else ""
        text = text.rstrip("\n") + "\n\n" + title + block + "\n"
    report.write_text(text)
