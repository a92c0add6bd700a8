"""The documentation a user reads stays inside the repository: the protocol is a copy kept identical to the
project's reference text, and README/docs neither name folders outside the clone nor link to missing files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
REFERENCE_PROTOCOL = REPO.parent / "shared" / "docs" / "EVALUATION.md"

#: Every Markdown file a user or developer is pointed to (the protocol is checked against its reference instead).
USER_DOCS = sorted([REPO / "README.md", REPO / "training" / "README.md", *(REPO / "docs").glob("*.md"),
                    *(REPO / "Resources").rglob("*.md")])
OUTSIDE = re.compile(r"\.\./shared|/work/|/home/|/root/|/tmp/|C:\\\\Users")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_protocol_is_in_the_repository() -> None:
    text = (REPO / "docs" / "EVALUATION.md").read_text(encoding="utf-8")
    assert text.startswith("# Evaluation protocol (v3)")


@pytest.mark.skipif(not REFERENCE_PROTOCOL.is_file(), reason="reference protocol (../shared beside the clone) absent")
def test_protocol_is_identical_to_the_reference() -> None:
    assert (REPO / "docs" / "EVALUATION.md").read_bytes() == REFERENCE_PROTOCOL.read_bytes(), (
        "docs/EVALUATION.md differs from ../shared/docs/EVALUATION.md: copy the reference over it")


@pytest.mark.parametrize("doc", [d for d in USER_DOCS if d.name != "EVALUATION.md"],
                         ids=lambda d: str(d.relative_to(REPO)))
def test_docs_name_no_folder_outside_the_repository(doc: Path) -> None:
    hits = [f"{doc.name}:{n}: {line.strip()[:100]}" for n, line in
            enumerate(doc.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    links = LINK.findall(doc.read_text(encoding="utf-8"))
    broken = [link for link in links if "://" not in link and not link.startswith("mailto:")
              and not (doc.parent / link).exists()]
    assert not broken, f"{doc.relative_to(REPO)} links to missing files: {broken}"
