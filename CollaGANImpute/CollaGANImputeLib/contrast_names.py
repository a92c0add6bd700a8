"""Which MR contrast a series or volume name denotes (``T1 post Gd`` → t1c): the name rules that DICOM series
selection, the Slicer module and the web app share. Pure Python.

Example:
    >>> classify_contrast("T2-FLAIR"), classify_contrast("MPRAGE post"), classify_contrast("T2*")
    ('t2f', 't1c', None)
"""

from __future__ import annotations

import re
from typing import Optional

#: Canonical contrast keys (BraTS 2023 names) and what each looks like in a series or file name.
CANONICAL_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
_FLAIR = re.compile(r"flair|^t2f$|^fl$|^darkfluid$")
_T2 = re.compile(r"^t2(w|wi|tse|fse|ax|sag|cor)?$")
_T2_STAR = re.compile(r"^t2(star|s)$|^swi$|^gre$")  # T2*/SWI are other contrasts: never guessed as T2w
_T1_POST_COMPOUND = re.compile(r"^t1(c|ce|gd|post|postgd|postcontrast|contrast|km|plusc|\+c|pc)$")
_T1_PRE_COMPOUND = re.compile(r"^t1(n|w|wi|pre|native|nc|se|tse|ax|sag|cor)?$")
_T1_SEQUENCE = re.compile(r"^(mprage|mp2rage|spgr|fspgr|bravo|tfl|tfe|vibe|t1mprage|mpr)$")
_POST_WORDS = {"post", "gd", "gad", "gado", "gadolinium", "contrast", "ce", "c", "postcontrast", "enhanced", "+c",
               "postgd", "pc"}
_STRONG_POST_WORDS = _POST_WORDS - {"c", "ce", "pc"}
_PRE_WORDS = {"pre", "precontrast", "native", "nc", "noncontrast", "plain", "n"}
_IGNORED = re.compile(r"^(seg|label|labels|mask|lesion|brainmask|synthetic|star)$")

def name_words(name: str) -> list[str]:
    """Lower-case words of a volume name; '+' kept (T1+C), everything else non-alphanumeric splits."""
    return [t for t in re.split(r"[^a-z0-9+]+", name.lower()) if t]


def classify_contrast(name: str) -> Optional[str]:
    """Which canonical contrast (t1n, t1c, t2w, t2f) a volume or contrast name denotes, or None.

    Case-insensitive, on whole words of the name: ``TCGA-HT-7882-t1c``, ``T1Gd``, ``t1_post``, ``MPRAGE post``
    → t1c; ``T1w``, ``MPRAGE``, ``T1 pre`` → t1n; ``T2``, ``t2w`` → t2w; ``FLAIR``, ``T2-FLAIR``, ``t2f`` → t2f.
    Label maps (``seg``, ``mask``) and T2*/SWI give None.
    """
    if re.search(r"t2\s*\*", name.lower()):
        return None  # T2*-weighted: not a T2w
    tokens = name_words(name)
    if not tokens or any(_IGNORED.match(t) for t in tokens) or any(_T2_STAR.match(t) for t in tokens):
        return None
    if any(_FLAIR.search(t) for t in tokens):
        return "t2f"
    if any(_T2.match(t) for t in tokens):
        return "t2w"
    if any(_T1_POST_COMPOUND.match(t) for t in tokens):
        return "t1c"
    has_t1 = any(_T1_PRE_COMPOUND.match(t) or _T1_SEQUENCE.match(t) for t in tokens)
    if has_t1 and any(t in _PRE_WORDS for t in tokens):
        return "t1n"  # "pre"/"native" wins over contrast words: "T1 precontrast" is a native T1
    post = [t for t in tokens if t in _POST_WORDS]
    # A bare "post Gd" series is a contrast-enhanced T1 in practice; short words ("c", "ce") need a T1 beside.
    if post and (has_t1 or any(t in _STRONG_POST_WORDS for t in post)):
        return "t1c"
    return "t1n" if has_t1 else None
