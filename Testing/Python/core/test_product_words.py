"""The tracked tree speaks of the product only: code, comments, tests, configs, scripts and docs say what the
software is and does, never how its development was organised (ticket numbers, work sittings, numbered stops,
the tools or helpers of whoever wrote it).

Every tracked text file is scanned (``git ls-files``; binaries and the protocol copy docs/EVALUATION.md are left
out) and each match is reported as ``file:line``. The product's own uses of "session" stay: pytest's
``scope="session"`` and the web app's single shared session of all browser tabs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

#: Tracked files not scanned: docs/EVALUATION.md must stay a byte-identical copy of the reference protocol.
SKIPPED = {"docs/EVALUATION.md"}

#: Files still being reworded: their matches are not failures yet. A file leaves this set once it is clean
#: (``test_pending_files_still_need_rewording`` says when).
PENDING: set[str] = set()

# Square brackets around single characters keep this file's own source from matching its patterns.
FORBIDDEN = re.compile(
    r"\bissues?[ ]?#?[0-9]+|\bissue-[0-9]+|\bthe[ ]issue's"
    r"|\b(?:first|second|third|fourth|fifth|sixth|this|that|each|later|earlier|previous|next|a|one|GPU|CPU)"
    r"[ -]sessions?\b"
    r"|\bsession[ ]by[ ]session|\b(?:in|during|of)[ ]the[ ]session\b|\bsession[ ]tool"
    r"|\bstop[ ][0-9]+|\bstop[']s\b|\bclosing[ ]notes?\b|\bsub-?agents?\b",
    re.IGNORECASE)

#: The product's own uses, blanked out of a line before it is searched.
ALLOWED = re.compile(r'scope="session"|browser tabs share (?:one|this) session|one session: every browser tab',
                     re.IGNORECASE)


def forbidden_words(text: str) -> list[tuple[int, str]]:
    """(line number, matched words) for each development word in ``text``, the product's own uses left out.

    >>> forbidden_words('@pytest.fixture(scope="session")\\nall browser tabs share one session')
    []
    """
    return [(number, match.group(0)) for number, line in enumerate(text.splitlines(), 1)
            for match in FORBIDDEN.finditer(ALLOWED.sub("", line))]


def _tracked_texts() -> dict[str, str]:
    """Path -> text of every tracked text file (a NUL byte in the first 8 KiB marks a binary)."""
    try:
        listing = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    texts = {}
    for name in filter(None, listing.stdout.decode("utf-8", "surrogateescape").split("\0")):
        path = REPO / name
        if name in SKIPPED or not path.is_file():
            continue
        with path.open("rb") as handle:
            head = handle.read(8192)
            if b"\0" in head:
                continue
            texts[name] = (head + handle.read()).decode("utf-8", "replace")
    return texts


def test_tracked_files_speak_of_the_product() -> None:
    texts = _tracked_texts()
    assert "README.md" in texts and "CollaGANImpute/CollaGANImputeLib/web.py" in texts  # the listing worked
    hits = [f"{name}:{number}: {words}" for name, text in sorted(texts.items()) if name not in PENDING
            for number, words in forbidden_words(text)]
    assert not hits, ("words about the development, not the product (say what the thing is or does):\n"
                      + "\n".join(hits))


def test_pending_files_still_need_rewording() -> None:
    texts = _tracked_texts()
    clean = sorted(name for name in PENDING if not forbidden_words(texts.get(name, "")))
    assert not clean, f"{clean} no longer need rewording: remove them from PENDING in {Path(__file__).name}"


# A "~" cuts each planted line where it would match, so that this file stays clean; the test removes it.
@pytest.mark.parametrize("planted", [
    "see issue~ 12", "Third~ session", "(issue~ #7)", "the second~-session run", "rows (stop~ 8's note)",
    "Late in the~ session", "the session~ tool", "a closing~ note", "the issue~'s target", "ask a sub~agent",
    "a GPU~ session", "at stop~'s end", "measured session~ by session",
])
def test_checker_catches_a_planted_line(planted: str) -> None:
    line = planted.replace("~", "")
    assert forbidden_words(planted) == []
    assert [number for number, _ in forbidden_words(f"A line about the product.\n{line}\n")] == [2], line


@pytest.mark.parametrize("line", [
    '@pytest.fixture(scope="session")',
    "one imputation at a time and all browser tabs share one session (one user per server",
    'ONE_JOB_TEXT = "This server runs one imputation at a time; all browser tabs share this session."',
    "- **One imputation at a time per server**, and one session: every browser tab connected to a server",
    "the lesion-to-tissue contrast, 12 patients", "stop = min(start + batch, n)", "run one server per session",
])
def test_checker_leaves_the_products_own_words(line: str) -> None:
    assert forbidden_words(line) == []


def test_an_allowed_use_does_not_hide_a_forbidden_one_on_its_line() -> None:
    planted = "all browser tabs share one session, as in issue~ 3".replace("~", "")
    assert [words for _, words in forbidden_words(planted)] == ["issue~ 3".replace("~", "")]
