"""Imputation for the scene logic: scene volumes to the core's stepped imputation
(:class:`~.job.ChunkedImputation`), and its labelled result (with its uncertainty map) back into the scene.

Example (slicer-core):
    >>> job = logic.startImputation(inputs, model, "t1c", cancel=threading.Event())     # doctest: +SKIP
    >>> while not job.step(): report(job.progress)                                      # doctest: +SKIP
    >>> node = logic.addResultToScene(job)                                               # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from ..errors import Cancelled, CollaGANError, InputError
from .display import tr as _
from .nodes import image_from_node, node_from_image

#: Node reference from a synthetic volume to its uncertainty map.
UNCERTAINTY_REFERENCE = "collaganUncertainty"


class ImputationLogic:
    """Imputation of :class:`.logic.SceneLogic` (``self.scene``; ``self.lastResults``: result node ID -> result)."""

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
        from ..refusals import refuse_unusable_inputs
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
        from ..provenance import synthetic_description
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
