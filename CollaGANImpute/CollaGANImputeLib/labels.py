"""The one table of score labels: how the Slicer/web compare table, the model card's validation table and the
command line's and training's reports name each score of :mod:`.metrics` (no heavy imports: ``info`` reads it).

Example:
    >>> METRIC_LABELS["identity_t"].column, METRIC_LABELS["nmse"].higher_is_better
    ('I_T', False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Metric:
    """How every report shows one score: its label, a short column title, what it means, which way is better
    (None: neither) and its decimals."""

    label: str
    column: str
    note: str = ""
    higher_is_better: Optional[bool] = None
    digits: int = 4


#: The one table of score labels, in display order (the Slicer/web compare table, the card's validation table, the
#: command line's and training's reports all read it). Example: ``METRIC_LABELS["identity_t"].column`` is "I_T".
METRIC_LABELS: dict[str, Metric] = {
    "nmse": Metric("NMSE", "NMSE", "lower is better", False),
    "psnr": Metric("PSNR (dB)", "PSNR dB", "higher is better; images clipped to [0, 1] p99 units", True, 2),
    "ssim": Metric("SSIM", "SSIM", "masked mean, 1 = identical", True),
    "identity_t": Metric("Tissue-contrast identity I_T", "I_T", "> 0: each tissue has the brightness the acquired "
                         "contrast gives it rather than an input's (tissue cells: octiles of the inputs)", True, 3),
    "identity": Metric("Voxel identity I (diagnostic)", "I", "r(synthetic, acquired) - max r(synthetic, input); can "
                       "be < 0 even for the best estimate the inputs allow", True, 3),
    "lesion_nmse": Metric("Lesion NMSE", "lesion NMSE", "inside mask and lesion", False),
    "lesion_ssim": Metric("Lesion SSIM", "lesion SSIM", "inside mask and lesion", True),
    "lesion_kept": Metric("Lesion contrast kept K", "K", "1 = as conspicuous as acquired, 0 = vanished, < 0 = "
                          "inverted", True, 2),
    "lesion_contrast_real": Metric("Lesion contrast, acquired", "C real",
                                   "mean in lesion / mean in the rest of the head", None, 2),
    "lesion_contrast_pred": Metric("Lesion contrast, synthetic", "C synthetic",
                                   "mean in lesion / mean in the rest of the head", None, 2),
    "lesion_voxels": Metric("Lesion voxels", "lesion voxels", "count inside the head mask", None, 0),
    "real_no_data": Metric("Acquired image without data", "no data", "share of the head outside its field of "
                           "view; not scored there (the whole target is not scored above 50 %)"),
    "not_scored": Metric("Not scored", "not scored", "1 = the acquired image has no data in more than half of the "
                         "head", None, 0),
}
