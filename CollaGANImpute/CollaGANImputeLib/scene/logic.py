"""What the CollaGAN Impute module does to an MRML scene, without Qt: the module's logic, used by the Slicer
panel (``CollaGANImpute.py`` delegates to it), the Python console and any other MRML front end (a web app on
``trame-slicer``, tests on the ``slicer-core`` wheel).

It reads volumes with Slicer's own reader, guesses which volume is which contrast, imputes (in one call, or in
steps with progress and cancel), adds the labeled synthetic volume, scores it against an acquired one (table,
error map with its colour legend, per-slice SSIM plot) and keeps the panel's choices in the module's parameter
node, which is saved with the scene. All computing is the core's (``CollaGANImputeLib``); volumes cross with
:mod:`.nodes`. Nothing here shows anything in a view: the caller decides (the Slicer panel does).

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

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import numpy as np
import slicer
import vtk

from ..errors import Cancelled, CollaGANError, InputError
from .nodes import LABEL_MAP_VOLUME, SCALAR_VOLUME, image_from_node, node_from_image, read_volume_node

try:  # Slicer's translation function; slicer-core has no Qt translations
    from slicer.i18n import tr as _
except ImportError:  # pragma: no cover - depends on the host
    def _(text: str) -> str:
        return text

MODULE_NAME = "CollaGANImpute"
SAMPLE_CONTRASTS = ("t1n", "t1c", "t2f")
#: Slicer's diverging blue-white-red colour table (from its colour files); a scene without it gets an equal one.
ERROR_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
ERROR_COLOR_NAME = "DivergingBlueRed"
ERROR_LEGEND_TITLE = "Synthetic - acquired (p99 units)"
#: Slicer's Inferno colour table (from its colour files) for the uncertainty overlay; else an equal one is added.
UNCERTAINTY_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
UNCERTAINTY_COLOR_NAME = "Inferno"
#: Node reference from a synthetic volume to its uncertainty map.
UNCERTAINTY_REFERENCE = "collaganUncertainty"
#: Parameter-node keys of the panel's fields (as Slicer's parameterNodeWrapper writes them) and of the inputs.
PARAMETER_FIELDS = ("modelName", "modelFile", "target", "device", "batchSize")
VOLUME_FIELDS = ("syntheticVolume", "referenceVolume", "lesionVolume")
INPUT_PREFIX = "input_"

def new_scene():
    """An empty MRML scene with Slicer's default colour tables (label-map colours, plot colours): what a bare
    ``slicer.vtkMRMLScene()`` of slicer-core lacks and Slicer's own scene has."""
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)  # adds the default colour nodes
    colors.SetMRMLScene(None)
    return scene


@dataclass
class ComparisonOutputs:
    """What a comparison adds to the scene, with the core's numbers (``comparison.scores``)."""

    comparison: object  # CollaGANImputeLib.scene.comparison.Comparison
    tableNode: object
    errorNode: object
    chartNode: object
    context: dict
    legendNode: object = None
    plotSeriesNode: object = None
    plotTableNode: object = None
    legendText: str = ""


class SceneLogic:
    """The CollaGAN Impute module's logic on one MRML scene (default: ``slicer.mrmlScene``), no Qt needed.

    Methods use Slicer's camelCase, as the module's console API does; see the module docstring for examples.
    """

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
        if self.scene is None:
            raise ValueError("No MRML scene: outside Slicer give one, e.g. SceneLogic(new_scene()).")
        self._models: dict = {}
        self.lastResults: dict = {}  # result node ID -> ImputationResult (its head mask serves compare)

    # --- reading ------------------------------------------------------------------------------------------

    def readVolume(self, path: Union[str, os.PathLike], name: Optional[str] = None, labelMap: bool = False):
        """A volume file read by Slicer's own reader into a new node (a label map with ``labelMap=True``)."""
        return read_volume_node(self.scene, path, name=name, labelMap=labelMap)

    def loadSampleCase(self) -> dict:
        """The bundled case TCGA-HT-7882: t1n, t1c, t2f as volumes and "seg" (lesion mask) as a label map."""
        from ..models import sample_case_dir

        folder = sample_case_dir()
        nodes = {c: self.readVolume(folder / f"{folder.name}-{c}.nii.gz") for c in SAMPLE_CONTRASTS}
        nodes["seg"] = self.readVolume(folder / f"{folder.name}-seg.nii.gz", labelMap=True)
        return nodes

    # --- parameter node -----------------------------------------------------------------------------------

    def getParameterNode(self):
        """The module's parameter node (``vtkMRMLScriptedModuleNode``, singleton 'CollaGANImpute'), created on
        first use exactly as Slicer's ScriptedLoadableModuleLogic does; it is saved with the scene."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)  # owned by the Python variable now
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node = self.scene.AddNode(node)
        if node.GetAttribute("ModuleName") != MODULE_NAME:  # restored after a scene close, as Slicer does
            node.SetAttribute("ModuleName", MODULE_NAME)
        return node

    def setParameters(self, inputs: Optional[Mapping[str, object]] = None, **values) -> None:
        """Store the panel's choices: ``modelName``, ``modelFile``, ``target``, ``device``, ``batchSize`` (text
        or numbers), ``syntheticVolume``/``referenceVolume``/``lesionVolume`` and ``inputs`` (contrast -> node
        or None) as node references. Same keys as the panel's parameterNodeWrapper, so either reads the other."""
        node = self.getParameterNode()
        unknown = set(values) - set(PARAMETER_FIELDS) - set(VOLUME_FIELDS)
        if unknown:
            raise ValueError(f"Unknown parameters {sorted(unknown)}; known: {PARAMETER_FIELDS + VOLUME_FIELDS}.")
        wasModified = node.StartModify()
        try:
            for key, value in values.items():
                if key in VOLUME_FIELDS:
                    node.SetParameter(key, "")  # the wrapper's marker that the field exists
                    node.SetNodeReferenceID(key, value.GetID() if value is not None else None)
                else:
                    node.SetParameter(key, "" if value is None else str(value))
            for contrast, volume in (inputs or {}).items():
                node.SetNodeReferenceID(INPUT_PREFIX + contrast, volume.GetID() if volume is not None else None)
        finally:
            node.EndModify(wasModified)

    def parameters(self) -> dict:
        """The stored choices: the fields of :meth:`setParameters` (text; missing ones None) and ``inputs``."""
        node = self.getParameterNode()
        found: dict = {key: node.GetParameter(key) if node.GetParameter(key) else None for key in PARAMETER_FIELDS}
        found.update({key: node.GetNodeReference(key) for key in VOLUME_FIELDS})
        roles = [node.GetNthNodeReferenceRole(i) for i in range(node.GetNumberOfNodeReferenceRoles())]
        found["inputs"] = {role[len(INPUT_PREFIX):]: node.GetNodeReference(role) for role in roles
                           if role.startswith(INPUT_PREFIX)}
        return found

    # --- models -------------------------------------------------------------------------------------------

    @staticmethod
    def bundledModelNames() -> list:
        from .. import bundled_models

        return [model.name for model in bundled_models()]

    def loadModel(self, source: Optional[str] = None, device: str = "cpu"):
        """A bundled model by name, a model file by path, or the default bundled model (None); cached."""
        from .. import bundled_models, default_model, load_model

        key = (str(source) if source is not None else "<default>", device)
        if key not in self._models:
            if source is None:
                model = default_model(device=device)
            else:
                bundled = {m.name: m for m in bundled_models()}
                model = (bundled[source].load(device=device) if source in bundled
                         else load_model(str(source), device=device))
            self._models[key] = model
        return self._models[key]

    def modelCard(self, source: Optional[str]):
        return self.loadModel(source).card

    def _model(self, model):
        """A LoadedModel as given; a bundled name, a file path or None (the default) loaded on the CPU."""
        if model is None or isinstance(model, (str, os.PathLike)):
            return self.loadModel(None if model is None else str(model))
        return model

    # --- inputs -------------------------------------------------------------------------------------------

    def volumeNodes(self) -> list:
        """Scalar volume nodes of the scene in scene order (label maps included)."""
        collection = self.scene.GetNodesByClass(SCALAR_VOLUME)
        return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]

    @staticmethod
    def isSynthetic(node) -> bool:
        from .names import SYNTHETIC_ATTRIBUTE, is_synthetic_name

        return node.GetAttribute(SYNTHETIC_ATTRIBUTE) == "true" or is_synthetic_name(node.GetName())

    @staticmethod
    def syntheticReason(node) -> Optional[str]:
        """Why ``node`` is an imputed volume, not an acquired one (None when nothing says so): its
        ``collagan_synthetic``/``collagan_uncertainty`` attribute, its description, or its name as this package
        names results and output files. A case merely named "synthetic..." (a phantom study) is not refused.

        Example:
            >>> SceneLogic.syntheticReason(resultNode)   # doctest: +SKIP
            'its collagan_synthetic attribute is true'
        """
        from .names import SYNTHETIC_SUFFIX

        for key in ("collagan_synthetic", "collagan_uncertainty"):
            if (node.GetAttribute(key) or "").lower() == "true":
                return f"its {key} attribute is true"
        if (node.GetDescription() or "").upper().startswith(("SYNTHETIC", "UNCERTAINTY")):
            return "its description says so"
        name = node.GetName() or ""
        if name.endswith(SYNTHETIC_SUFFIX) or "-synthetic-collagan" in name or "-uncertainty-collagan" in name:
            return "its name says so"
        return None

    def guessInputNodes(self, contrasts: list, taken: tuple = ()) -> dict:
        """Scalar volumes of the scene matched to the contrasts by name; label maps, error maps, synthetic
        volumes and the nodes in ``taken`` are never proposed. Contrasts without a match map to None."""
        from .names import match_volumes

        volumes = [n for n in self.volumeNodes() if not n.IsA(LABEL_MAP_VOLUME) and not self.isSynthetic(n)
                   and n.GetAttribute("collagan_error_map") != "true"
                   and n.GetAttribute("collagan_uncertainty") != "true" and all(n is not t for t in taken)]
        byName: dict = {}
        for node in volumes:
            byName.setdefault(node.GetName(), node)
        matches = match_volumes(list(byName), contrasts)
        return {c: byName[name] if name else None for c, name in matches.items()}

    @staticmethod
    def defaultTarget(contrasts: list, inputs: dict) -> Optional[str]:
        from .names import default_target

        return default_target(contrasts, {c: (n.GetID() if n else None) for c, n in inputs.items()})

    @staticmethod
    def describeDevice(choice: str) -> str:
        from ..inference import describe_device, resolve_device

        try:
            return _("Runs on: {device}").format(device=describe_device(resolve_device(choice)))
        except Exception as error:
            return str(error)

    # --- imputation ---------------------------------------------------------------------------------------

    def startImputation(self, inputNodes: dict, model, target: str, device: str = "auto", batchSize: int = 8,
                        cancel: Optional[threading.Event] = None, precision: str = "auto",
                        uncertainty: bool = False, allowSynthetic: bool = False, register: bool = False,
                        runtime: str = "auto"):
        """Copy the input volumes out of the scene; return a :class:`~.job.ChunkedImputation` to step or run.

        The first input is the reference grid. ``cancel``: an Event that stops the job (also ``job.cancel()``).
        ``uncertainty``: also the uncertainty map (more passes of the model; :mod:`CollaGANImputeLib.uncertainty`).
        A synthetic node (:meth:`syntheticReason`) is refused unless ``allowSynthetic``; then the result's
        provenance names it. Two inputs with identical voxels are refused.
        ``register``: align the inputs to the first one first (rigid, :mod:`CollaGANImputeLib.registration`).
        ``runtime``: what runs the model (:mod:`CollaGANImputeLib.runtime`; ``auto``: the fastest here).
        """
        from ..pipeline import refuse_unusable_inputs
        from .job import ChunkedImputation

        images = {}
        for contrast, node in inputNodes.items():
            images[contrast] = image_from_node(node)
            why = self.syntheticReason(node) if node is not None and contrast != target else None
            if why is not None:
                if not allowSynthetic:
                    raise InputError(f"The input '{contrast}' ('{node.GetName()}') is a synthetic volume ({why}), not "
                                     "an acquired scan: imputing from it would hide that the result rests on imputed "
                                     "data. Choose the acquired volume, or allow synthetic inputs explicitly "
                                     "(recorded in the result's provenance).")
                images[contrast].SetMetaData("collagan_synthetic", "true")
                images[contrast].SetMetaData("collagan_synthetic_source", f"node '{node.GetName()}': {why}")
        refuse_unusable_inputs(images, [c for c in images if c != target], allow_synthetic=True)
        return ChunkedImputation(images, self._model(model), target, device=device, batch_size=batchSize,
                                 precision=precision, cancel_flag=cancel, uncertainty=uncertainty, register=register,
                                 runtime=runtime)

    def addResultToScene(self, job):
        """Add the finished job's image as '<target> (synthetic, CollaGAN)' with its ``collagan_*`` attributes and
        the description the CLI writes into its file header."""
        from ..pipeline import synthetic_description
        from .names import synthetic_attributes, synthetic_node_name

        if job.result is None:
            raise ValueError("The imputation has not finished: step the job until step() returns True.")
        image = job.result.images[job.target]
        node = node_from_image(image, self.scene, self.scene.GenerateUniqueName(synthetic_node_name(job.target)))
        for key, value in synthetic_attributes(image).items():
            node.SetAttribute(key, value)
        node.SetDescription(synthetic_description(job.target, image.GetMetaData("collagan_inputs").split(",")))
        self.lastResults[node.GetID()] = job.result
        if job.target in job.result.uncertainty:
            self.addUncertaintyToScene(job.result, job.target, node)
        return node

    def addUncertaintyToScene(self, result, target: str, syntheticNode):
        """Add ``result``'s uncertainty map of ``target`` as '<target> uncertainty (CollaGAN)': its ``collagan_*``
        attributes, the Inferno colours on 0-0.4 p99 units with values under 0.05 left uncoloured, a colour
        legend; referenced from ``syntheticNode`` (:meth:`uncertaintyNodeFor`)."""
        from ..uncertainty import DISPLAY_RANGE, DISPLAY_THRESHOLD, LEGEND_TITLE, uncertainty_description

        image = result.uncertainty[target]
        name = self.scene.GenerateUniqueName(f"{target} uncertainty (CollaGAN)")
        node = node_from_image(image, self.scene, name)
        for key in image.GetMetaDataKeys():
            if key.startswith("collagan_"):
                node.SetAttribute(key, image.GetMetaData(key))
        node.SetDescription(uncertainty_description(target, image.GetMetaData("collagan_inputs").split(",")))
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(self.uncertaintyColorNode().GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(*DISPLAY_RANGE)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(DISPLAY_THRESHOLD)
        self._legendFor(node, LEGEND_TITLE)
        syntheticNode.SetNodeReferenceID(UNCERTAINTY_REFERENCE, node.GetID())
        return node

    @staticmethod
    def uncertaintyNodeFor(syntheticNode):
        """The uncertainty map added with ``syntheticNode`` (None when none was computed)."""
        return syntheticNode.GetNodeReference(UNCERTAINTY_REFERENCE) if syntheticNode is not None else None

    @staticmethod
    def uncertaintyLegendText(syntheticNode) -> str:
        """The overlay's colours in words (for a label beside the views)."""
        from ..uncertainty import legend_text

        return legend_text(syntheticNode.GetAttribute("collagan_target") or "volume")

    def imputeNodes(self, inputNodes: dict, model=None, target: Optional[str] = None, device: str = "auto",
                    batchSize: int = 8, progress: Optional[Callable[[float], None]] = None,
                    cancel: Optional[threading.Event] = None, precision: str = "auto", uncertainty: bool = False,
                    allowSynthetic: bool = False, register: bool = False, runtime: str = "auto"):
        """Impute ``target`` (default: the first missing contrast) from scene volumes; return the new node.

        ``model``: a LoadedModel, a bundled model name, a file path, or None for the default bundled model.
        ``progress`` gets the fraction done; setting ``cancel`` raises Cancelled and leaves the scene as it was.
        ``uncertainty``: also the uncertainty map, as a node referenced from the result (:meth:`uncertaintyNodeFor`).
        ``allowSynthetic``: as for :meth:`startImputation`.
        ``register``: align the inputs to the first one first (rigid; the transforms are in the node's
        ``collagan_registration`` attribute).
        """
        model = self._model(model)
        if target is None:
            target = self.defaultTarget(list(model.card.contrasts), inputNodes)
        usable = {c: n for c, n in inputNodes.items() if n is not None and c != target}
        job = self.startImputation(usable, model, target, device=device, batchSize=batchSize, cancel=cancel,
                                   precision=precision, uncertainty=uncertainty, allowSynthetic=allowSynthetic,
                                   register=register, runtime=runtime)
        job.run(progress)
        return self.addResultToScene(job)

    def imputeCaseFolder(self, folder: str, model=None, outDir: Optional[str] = None, load: bool = True, **kwargs):
        """Impute a BraTS-named case folder from disk (exactly the CLI's core call), optionally reading the
        written results into the scene as labeled synthetic volumes."""
        from .. import impute_case
        from .names import SYNTHETIC_ATTRIBUTE, synthetic_node_name

        written = impute_case(folder, self._model(model), out_dir=outDir, **kwargs)
        if load:
            for target, path in written.items():
                node = self.readVolume(path, name=self.scene.GenerateUniqueName(synthetic_node_name(target)))
                node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")  # NIfTI keeps no collagan_* keys: label it again
                node.SetAttribute("collagan_target", target)
        return written

    @staticmethod
    def isCancellation(error: Exception) -> bool:
        return isinstance(error, Cancelled)

    @staticmethod
    def plainError(error: Exception) -> str:
        """The core's errors already say what is wrong and how to fix it; others get their type named."""
        if isinstance(error, CollaGANError):
            return str(error)
        if type(error).__name__ == "OutOfMemoryError":
            return _("The GPU ran out of memory. Choose device 'cpu' (or a smaller batch size) and try again.")
        return f"{type(error).__name__}: {error}"

    @staticmethod
    def bannerText(node) -> str:
        from .names import synthetic_banner

        attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames()
                      if name.startswith("collagan_")}
        return synthetic_banner(attributes)

    # --- comparison ---------------------------------------------------------------------------------------

    def _colorTable(self, node_id: str, name: str, colors, description: str):
        """The scene's colour node ``node_id`` (or one named ``name``); where the scene has none (slicer-core
        loads no colour files) an equal user table of the RGB rows ``colors()`` returns is added once."""
        node = self.scene.GetNodeByID(node_id)
        if node is None:
            collection = self.scene.GetNodesByName(name)
            node = collection.GetItemAsObject(0) if collection.GetNumberOfItems() else None
        if node is None:
            rows = colors()
            node = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
            node.SetTypeToUser()
            node.SetNumberOfColors(len(rows))
            for index, rgb in enumerate(rows):
                node.SetColor(index, "", *[float(v) for v in rgb[:3]], 1.0)
            node.SetAttribute("collagan_color", description)
        return node

    def errorColorNode(self):
        """Slicer's DivergingBlueRed colour table, or an equal blue - white - red table of 256 colours."""
        def blue_white_red():
            blue, white, red = np.array([0.23, 0.30, 0.75]), np.ones(3), np.array([0.71, 0.02, 0.15])
            return [white + t * (red - white) if t >= 0 else white - t * (blue - white)
                    for t in np.linspace(-1.0, 1.0, 256)]

        return self._colorTable(ERROR_COLOR_NODE_ID, ERROR_COLOR_NAME, blue_white_red,
                                "diverging blue-white-red (Slicer's DivergingBlueRed)")

    def _legendFor(self, volumeNode, title: str = ERROR_LEGEND_TITLE):
        if not self.scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):  # slicer-core's bare scene
            self.scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(volumeNode)
        if legend is not None:
            legend.SetTitleText(_(title))
            legend.SetVisibility(True)
        return legend

    def uncertaintyColorNode(self):
        """Slicer's Inferno colour table, or an equal table of 256 colours (matplotlib's inferno)."""
        def inferno():
            from matplotlib import colormaps  # a core dependency; no pyplot needed

            return colormaps["inferno"](np.linspace(0.0, 1.0, 256))

        return self._colorTable(UNCERTAINTY_COLOR_NODE_ID, UNCERTAINTY_COLOR_NAME, inferno,
                                "inferno (Slicer's Inferno)")

    def compare(self, syntheticNode, referenceNode, inputNodes: dict, lesionNode=None) -> ComparisonOutputs:
        """Score a synthetic volume against the acquired one as ``collagan-impute evaluate`` does and add a table
        node (one row per score), the signed error map (diverging colours, window +/- its 99th percentile, a
        colour legend) and the per-slice SSIM plot (table, series and chart nodes) to the scene."""
        from .comparison import compare_to_reference, score_table, slice_ssim_table

        if syntheticNode is None or referenceNode is None:
            raise ValueError(_("Select the synthetic volume and the acquired volume to compare it with."))
        result = self.lastResults.get(syntheticNode.GetID())
        target = syntheticNode.GetAttribute("collagan_target")
        case = result.cases.get(target, result.case) if result is not None else None
        # The head mask comes from the inputs only: never from the target, the reference or the synthetic volume.
        usable = {c: n for c, n in inputNodes.items() if n is not None and c != target
                  and n is not referenceNode and n is not syntheticNode}
        inputs = {c: image_from_node(n) for c, n in usable.items()} if case is None else {}
        comparison = compare_to_reference(
            image_from_node(syntheticNode), image_from_node(referenceNode), inputs,
            lesion=image_from_node(lesionNode) if lesionNode is not None else None, case=case)

        tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("CollaGAN scores"))
        for title in (_("Metric"), _("Value"), _("Note")):
            column = tableNode.AddColumn(vtk.vtkStringArray())
            column.SetName(title)
        for row in score_table(comparison.scores):
            index = tableNode.AddEmptyRow()
            for col, text in enumerate(row):
                tableNode.SetCellText(index, col, text)

        errorNode = node_from_image(comparison.error_image, self.scene,
                                    self.scene.GenerateUniqueName(f"{syntheticNode.GetName()} error map"))
        errorNode.SetAttribute("collagan_error_map", "true")
        display = errorNode.GetDisplayNode()
        display.SetAndObserveColorNodeID(self.errorColorNode().GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(-comparison.error_limit, comparison.error_limit)
        legend = self._legendFor(errorNode)
        legendText = _("Error map: synthetic minus acquired in p99 units, blue = synthetic too dark, red = too "
                       "bright, white = equal; colour range +/-{limit:.2f}.").format(limit=comparison.error_limit)

        title = _("Per-slice SSIM of {name}").format(name=syntheticNode.GetName())
        columns = (_("Axial slice"), _("SSIM"))
        plotTable = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName(f"{title} table"))
        curve = slice_ssim_table(comparison.slice_ssim)
        slicer.util.updateTableFromArray(plotTable, [curve[:, 0], curve[:, 1]], list(columns))
        series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", self.scene.GenerateUniqueName(title))
        series.SetAndObserveTableNodeID(plotTable.GetID())
        series.SetXColumnName(columns[0])
        series.SetYColumnName(columns[1])
        series.SetPlotType(series.PlotTypeScatter)
        series.SetUniqueColor()
        chartNode = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.scene.GenerateUniqueName(
            f"{title} chart"))
        chartNode.SetTitle(title)
        chartNode.SetXAxisTitle(columns[0])
        chartNode.SetYAxisTitle(columns[1])
        chartNode.AddAndObservePlotSeriesNodeID(series.GetID())

        context = {"synthetic": syntheticNode.GetName(), "reference": referenceNode.GetName(),
                   "model": syntheticNode.GetAttribute("collagan_model") or "",
                   "lesion": lesionNode.GetName() if lesionNode is not None else ""}
        return ComparisonOutputs(comparison, tableNode, errorNode, chartNode, context, legendNode=legend,
                                 plotSeriesNode=series, plotTableNode=plotTable, legendText=legendText)

    @staticmethod
    def exportScores(outputs: ComparisonOutputs, path: Union[str, os.PathLike]) -> Path:
        """Write the comparison's scores (and what was compared) as CSV, atomically."""
        from .comparison import write_scores_csv

        return write_scores_csv(path, outputs.comparison.scores, context=outputs.context)
