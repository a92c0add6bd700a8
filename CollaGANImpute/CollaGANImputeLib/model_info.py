"""What a user needs to know about a model before trusting its output, as ``collagan-impute info`` prints it.

Purpose, domain and limits come from the card's own fields where it has them (``intended_use``, ``domain``,
``limitations``), else from the Markdown card a bundled model ships beside its file (sections "Intended use" and
"Limits"), else from what the embedded card says (description, training data) with the limits every model of
this package shares. Validation numbers are the model's own entry of ``card.metrics``: the entry named by
``metrics["model"]``, by the card's name, or ``collagan`` (the name training's ``report --card-metrics`` gives the
model it describes); other methods' numbers stay in the JSON.

Example:
    >>> overview = model_overview(default_model())          # doctest: +SKIP
    >>> print(format_overview(overview))                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .labels import METRIC_LABELS

if TYPE_CHECKING:
    from .card import LoadedModel, ModelCard

CONTRAST_NAMES = {"t1n": "T1", "t1c": "T1+Gd", "t2w": "T2", "t2f": "T2-FLAIR"}
#: (metric key, column title, digits) of the validation table, from the core's one table of labels
METRIC_COLUMNS = [(key, METRIC_LABELS[key].column, METRIC_LABELS[key].digits) for key in
                  ("nmse", "psnr", "ssim", "lesion_nmse", "lesion_ssim", "identity_t", "identity", "lesion_kept")]
SHARED_LIMITS = [
    "Every output is a SYNTHETIC image: research use only, not for diagnosis or treatment.",
    "2-D model applied slice by slice (axial): no through-plane consistency.",
    "Intensities in p99 units of each volume: no absolute scale.",
]


def markdown_section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a Markdown text ('' if absent)."""
    match = re.search(rf"^##\s+{re.escape(heading)}\b[^\n]*\n(.*?)(?=^##\s|\Z)", text, re.M | re.S)
    return match.group(1).strip() if match else ""


def _plain(text: str) -> str:
    """Markdown emphasis and code marks removed, lines joined."""
    return " ".join(re.sub(r"\*\*|`", "", text).split())


def _bullets(text: str) -> list[str]:
    items = re.split(r"^\s*[-*]\s+", text, flags=re.M)
    return [_plain(item) for item in items if item.strip()]


def bundled_card_markdown(model: LoadedModel) -> Optional[Path]:
    """The Markdown card shipped beside a bundled model file (None for any other file)."""
    from .resources import bundled_models

    try:
        for bundled in bundled_models():
            if bundled.card is not None and bundled.path.resolve() == Path(model.path).resolve():
                return bundled.card if bundled.card.is_file() else None
    except Exception:  # a damaged manifest must not stop `info` of another file
        return None
    return None


def own_metrics(card: ModelCard) -> tuple[Optional[str], dict[str, Any]]:
    """(key, metrics) of the model's own validation numbers in ``card.metrics`` ((None, {}) if none)."""
    metrics = card.metrics or {}
    for key in (metrics.get("model"), card.name, "collagan"):
        if isinstance(key, str) and isinstance(metrics.get(key), dict):
            return key, metrics[key]
    per_target = {k: v for k, v in metrics.items() if isinstance(v, dict) and "nmse" in v}
    if per_target:  # one model's metrics, not nested under a method name
        return None, per_target
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return None, flat


def model_overview(model: LoadedModel, markdown: Optional[Path] = None) -> dict[str, Any]:
    """Purpose, domain, contrasts, limits, licence, own validation numbers, file and checksum of ``model``."""
    card = model.card
    markdown = markdown if markdown is not None else bundled_card_markdown(model)
    text = markdown.read_text(encoding="utf-8") if markdown is not None else ""
    purpose = card.intended_use or _plain(markdown_section(text, "Intended use")) or card.description
    domain = card.domain or card.training.get("data", "")
    limits = list(card.limitations or _bullets(markdown_section(text, "Limits")))
    if not limits:  # nothing model-specific: what holds for every model of this package, and a warning
        limits = SHARED_LIMITS + ["The card states no limits of its own; ask the model's author before use."]
    key, metrics = own_metrics(card)
    order = {c: i for i, c in enumerate(card.contrasts)}  # rows in the card's contrast order: t1n, t1c, t2f
    metrics = dict(sorted(metrics.items(), key=lambda kv: (order.get(kv[0].split("<-")[0], len(order)), kv[0])))
    others = sorted(k for k, v in (card.metrics or {}).items() if isinstance(v, dict) and k != key)
    return {
        "name": card.name,
        "purpose": purpose or "not stated in the card",
        "domain": domain or "not stated in the card",
        "contrasts": list(card.contrasts),
        "limits": limits,
        "licence": card.licence,
        "validation": {"method": key, "metrics": metrics, "other_methods": others if key else [],
                       "protocol": (card.metrics or {}).get("protocol", ""),
                       "patients": (card.metrics or {}).get("validation_patients")},
        "markdown_card": str(markdown) if markdown is not None else None,
        "file": str(model.path),
        "sha256": model.sha256,
    }


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def validation_lines(validation: dict[str, Any], width: int = 100) -> list[str]:
    metrics = validation["metrics"]
    if not metrics:
        return ["  none in the card (score it: collagan-impute evaluate DATA_DIR --model MODEL.pt --out DIR)"]
    where = ", ".join(str(x) for x in (
        f"{validation['patients']} patients" if validation.get("patients") else "", validation.get("protocol"))
        if x)
    lines = textwrap.wrap(where, width, initial_indent="  ", subsequent_indent="  ")
    rows = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    if rows:
        columns = [c for c in METRIC_COLUMNS if any(c[0] in v for v in rows.values())]
        header = ["imputed <- from", *[title for _, title, _ in columns]]
        body = [[label.replace("<-", " <- "), *[_number(v.get(m), d) for m, _, d in columns]]
                for label, v in rows.items()]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        for row in [header, *body]:
            lines.append("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                           for i, (cell, w) in enumerate(zip(row, widths))))
    else:
        lines += [f"  {k}: {_number(v, 4)}" for k, v in metrics.items()]
    if validation.get("other_methods"):
        lines.append(f"  (the card also holds {', '.join(validation['other_methods'])} for comparison: --json)")
    return lines


def format_overview(overview: dict[str, Any], width: int = 100) -> str:
    """The overview as text: the facts a user needs first, then where the rest is."""
    def wrap(label: str, text: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=f"{label:<11}", subsequent_indent=" " * 11) or [label]

    contrasts = ", ".join(f"{c} ({CONTRAST_NAMES[c]})" if c in CONTRAST_NAMES else c for c in overview["contrasts"])
    lines = [f"{overview['name']}: imputes one missing MR contrast from the others. Outputs are SYNTHETIC.", ""]
    lines += wrap("Purpose:", overview["purpose"])
    lines += wrap("Domain:", overview["domain"])
    unsupported = [f"{c} ({n})" for c, n in CONTRAST_NAMES.items() if c not in overview["contrasts"]]
    lines += wrap("Contrasts:", contrasts + (f"; not supported by this model: {', '.join(unsupported)}"
                                             if unsupported else ""))
    lines += wrap("Licence:", overview["licence"])
    method = overview["validation"]["method"]
    lines.append(f"Validation ({'this model' + (f', {method!r} in the card' if method else '')}):")
    lines += validation_lines(overview["validation"], width)
    lines.append("Limits:")
    for limit in overview["limits"]:
        lines += textwrap.wrap(limit, width, initial_indent="  - ", subsequent_indent="    ")
    lines.append("")
    if overview["markdown_card"]:
        lines.append(f"Full card: {overview['markdown_card']}")
    lines.append(f"File: {overview['file']}\nSHA-256: {overview['sha256']}")
    lines.append("Architecture, normalization, training recipe and every method's metrics: info --json")
    return "\n".join(lines)
