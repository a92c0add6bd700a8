"""What the CollaGAN Impute module does to an MRML scene, without Qt: the module's logic, used by the Slicer
panel (``CollaGANImpute.py``'s Logic inherits it), the Python console and any other MRML front end (a web app on
``trame-slicer``, tests on the ``slicer-core`` wheel).

It reads volumes with Slicer's own reader, guesses which volume is which contrast, imputes (in one call, or in
steps with progress and cancel), adds the labeled synthetic volume, scores it against an acquired one (table,
error map with its colour legend, per-slice SSIM plot) and keeps the panel's choices in the module's parameter
node, which is saved with the scene. All computing is the core's (``CollaGANImputeLib``); volumes cross with
:mod:`.nodes`. Nothing here shows anything in a view: the caller decides (the Slicer panel does).

One job per module, joined here: :mod:`.parameters` (the parameter node and its fields), :mod:`.model_cache`
(models), :mod:`.inputs` (reading and guessing inputs), :mod:`.imputation` (imputing, the result nodes) and
:mod:`.display` (colour tables, the Compare section's nodes). The Slicer module's Logic inherits
:class:`SceneLogic`.

Example (Python with ``pip install slicer-core``; in Slicer ``SceneLogic()`` uses ``slicer.mrmlScene``):
    >>> logic = SceneLogic(new_scene())                                                  # doctest: +SKIP
    >>> nodes = logic.loadSampleCase()          # read by Slicer's reader               # doctest: +SKIP
    >>> inputs = logic.guessInputNodes(["t1n", "t1c", "t2f"])                            # doctest: +SKIP
    >>> node = logic.imputeNodes({"t1n": inputs["t1n"], "t2f": inputs["t2f"]}, target="t1c")  # doctest: +SKIP
    >>> outputs = logic.compare(node, nodes["t1c"], inputs, lesionNode=nodes["seg"])     # doctest: +SKIP
    >>> outputs.comparison.scores["ssim"], outputs.tableNode.GetNumberOfRows()           # doctest: +SKIP

Stepwise, e.g. from a GUI timer or a worker (``step`` touches no scene; ``addResultToScene`` does, so call it
where the scene lives):
    >>> job = logic.startImputation(inputs, model, "t1c", cancel=threading.Event())     # doctest: +SKIP
    >>> while not job.step(): report(job.progress)                                      # doctest: +SKIP
    >>> node = logic.addResultToScene(job)                                               # doctest: +SKIP
"""

from __future__ import annotations

import slicer

from .display import ERROR_COLOR_NAME, ComparisonOutputs, DisplayLogic
from .imputation import UNCERTAINTY_REFERENCE, ImputationLogic
from .inputs import SAMPLE_CONTRASTS, InputLogic
from .model_cache import ModelLogic
from .parameters import INPUT_PREFIX, MODULE_NAME, PARAMETER_FIELDS, VOLUME_FIELDS, ParameterLogic

__all__ = ["ERROR_COLOR_NAME", "INPUT_PREFIX", "MODULE_NAME", "PARAMETER_FIELDS", "SAMPLE_CONTRASTS",
           "UNCERTAINTY_REFERENCE", "VOLUME_FIELDS", "ComparisonOutputs", "SceneLogic", "new_scene"]


def new_scene():
    """An empty MRML scene with Slicer's default colour tables (label-map colours, plot colours): what a bare
    ``slicer.vtkMRMLScene()`` of slicer-core lacks and Slicer's own scene has."""
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)  # adds the default colour nodes
    colors.SetMRMLScene(None)
    return scene


class SceneLogic(ParameterLogic, ModelLogic, InputLogic, ImputationLogic, DisplayLogic):
    """The CollaGAN Impute module's logic on one MRML scene (default: ``slicer.mrmlScene``), no Qt needed.

    Methods use Slicer's camelCase, as the module's console API does; see the module docstring for examples.
    """

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
        if self.scene is None:
            raise ValueError("No MRML scene: outside Slicer give one, e.g. SceneLogic(new_scene()).")
        self._models: dict = {}
        self.lastResults: dict = {}  # result node ID -> ImputationResult (its head mask serves compare)
