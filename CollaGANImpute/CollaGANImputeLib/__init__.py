"""CollaGANImputeLib: impute a missing MR contrast with a CollaGAN TorchScript model (no Slicer needed).

Example:
    >>> from CollaGANImputeLib import default_model, impute_case
    >>> model = default_model()                                              # doctest: +SKIP
    >>> impute_case("Resources/SampleData/TCGA-CS-4941", model, out_dir="out")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .contract import LoadedModel, ModelCard, load_model, read_card, save_model  # noqa: E402
from .errors import Cancelled, CollaGANError, GeometryWarning, InputError, ModelError, NoBundledModelError  # noqa: E402
from .models import bundled_models, default_model, sample_case_dir  # noqa: E402
from .pipeline import ImputationResult, impute, impute_case, prepare_case, read_case  # noqa: E402

__all__ = [
    "Cancelled", "CollaGANError", "GeometryWarning", "ImputationResult", "InputError", "LoadedModel", "ModelCard",
    "ModelError", "NoBundledModelError", "__version__", "bundled_models", "default_model", "impute",
    "impute_case", "load_model", "prepare_case", "read_card", "read_case", "sample_case_dir", "save_model",
]
