"""What the Slicer module needs of the Slicer application itself (not only MRML): installing the Python packages,
the Sample Data entry of the bundled case, and showing results in the slice views. The module's Logic inherits
:class:`ApplicationLogic` before :class:`.logic.SceneLogic`; nothing else here imports this module, and it
imports nothing of the core at load time (Slicer loads the module before torch is installed).

Example (Slicer's Python console):
    >>> logic = slicer.util.getModuleLogic("CollaGANImpute")                  # doctest: +SKIP
    >>> logic.missingDependencies()                                           # doctest: +SKIP
    []
    >>> node = logic.addResultToScene(job, showNextTo=getNode("case-t1n"))   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
from typing import Optional

import slicer

from .display import tr as _

#: The Slicer module's folder (CollaGANImpute/), where its Resources are installed.
MODULE_DIR = pathlib.Path(__file__).resolve().parents[2]
SAMPLE_CONTRASTS = ("t1n", "t1c", "t2f")


def sampleCaseFolder() -> Optional[pathlib.Path]:
    """The bundled sample case (found by :mod:`..resources`), or None when it is not installed."""
    from ..errors import NoSampleCaseError
    from ..resources import sample_case_dir

    try:
        return sample_case_dir()
    except NoSampleCaseError:
        return None


def loadSampleCase(source=None) -> list:
    """Load the bundled case: three contrasts as volumes, the lesion mask as a label map."""
    from ..resources import sample_case_dir

    folder = sample_case_dir()  # NoSampleCaseError says what to reinstall
    nodes = [slicer.util.loadVolume(str(folder / f"{folder.name}-{c}.nii.gz")) for c in SAMPLE_CONTRASTS]
    nodes.append(slicer.util.loadLabelVolume(str(folder / f"{folder.name}-seg.nii.gz")))
    return nodes


def registerSampleData():
    """Add the bundled LGG case to the Sample Data module (files are local: no download)."""
    import SampleData

    folder = sampleCaseFolder()
    if folder is None:
        return
    names = [f"{folder.name}-{c}" for c in (*SAMPLE_CONTRASTS, "seg")]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CollaGAN",
        sampleName=f"CollaGAN LGG case {folder.name}",
        uris=[(folder / f"{name}.nii.gz").as_uri() for name in names],
        fileNames=[f"{name}.nii.gz" for name in names],
        nodeNames=names,
        thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "CollaGANSample.png"),
        loadFileType=["VolumeFile", "VolumeFile", "VolumeFile", "LabelMapVolumeFile"],
        customDownloader=loadSampleCase,
    )


class ApplicationLogic:
    """The Slicer application side of the module's Logic: Python packages and views. Mixed in before
    :class:`.logic.SceneLogic`, whose ``addResultToScene`` and ``compare`` it extends with showing the result."""

    # --- dependencies -------------------------------------------------------------------------------------

    @staticmethod
    def missingDependencies() -> list:
        """Pip requirements whose package cannot be imported (checked without importing it)."""
        from ..requirements import missing_requirements  # torch-free: works before the install

        return missing_requirements()

    def dependenciesReady(self) -> bool:
        return not self.missingDependencies()

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install the missing requirements (torch from the PyTorch extension when present); True when all import
        afterwards.

        Slicer >= 5.12 uses slicer.packaging.pip_ensure (asks, shows progress, offers a restart when needed);
        older versions ask here and use slicer.util.pip_install.
        """
        missing = self.missingDependencies()
        if not missing:
            return True
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils  # the PyTorch extension: installs the CUDA build matching the driver
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled():
                    if torchLogic.installTorch(askConfirmation, None, ">=2.0") is None:
                        return False  # the user declined
                missing = [req for req in missing if not req.startswith("torch")]
        if missing:
            try:  # importlib keeps 'slicer' a global name here (an import statement would make it local)
                hasEnsure = hasattr(importlib.import_module("slicer.packaging"), "pip_ensure")
            except ImportError:
                hasEnsure = False
            if hasEnsure:  # Slicer >= 5.12
                slicer.packaging.pip_ensure(missing, requester="CollaGANImpute", prompt_install=askConfirmation)
            else:
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                        _("CollaGANImpute will download and install: {packages}. This can take a few minutes. "
                          "Continue?").format(packages=", ".join(missing)), windowTitle=_("Install packages")):
                    return False
                slicer.util.pip_install(" ".join(missing))
        importlib.invalidate_caches()
        if self.missingDependencies():
            if slicer.util.confirmYesNoDisplay(
                    _("The packages were installed but cannot be loaded until Slicer restarts. Restart now?"),
                    windowTitle=_("Restart needed")):
                slicer.util.restart()
            return False
        return True

    # --- views -------------------------------------------------------------------------------------------

    def addResultToScene(self, job, showNextTo=None):
        """Add the finished job's image as '<target> (synthetic, CollaGAN)', shown beside ``showNextTo``; its
        uncertainty map, if computed, as a coloured overlay on it."""
        node = super().addResultToScene(job)
        if showNextTo is not None:
            self.showSideBySide(node, showNextTo)
        uncertainty = self.uncertaintyNodeFor(node)
        if uncertainty is not None:
            self.showOverlay(node, uncertainty)
        return node

    def compare(self, syntheticNode, referenceNode, inputNodes: dict, lesionNode=None, show: bool = True):
        """Score a synthetic volume against the acquired one: a table node, an error-map volume with a colour
        legend and a per-slice SSIM plot (SceneLogic.compare); ``show`` puts them in the views."""
        outputs = super().compare(syntheticNode, referenceNode, inputNodes, lesionNode=lesionNode)
        if show:
            slicer.util.setSliceViewerLayers(background=referenceNode, foreground=outputs.errorNode,
                                             foregroundOpacity=0.6,
                                             label=lesionNode if lesionNode is not None and lesionNode.IsA(
                                                 "vtkMRMLLabelMapVolumeNode") else None)
            slicer.modules.plots.logic().ShowChartInLayout(outputs.chartNode)
        elif outputs.legendNode is not None:
            outputs.legendNode.SetVisibility(False)
        return outputs

    @staticmethod
    def showOverlay(syntheticNode, overlayNode, opacity: float = 0.6) -> None:
        """``overlayNode`` (the uncertainty map) in colour over ``syntheticNode`` in the views that show it."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            slicer.util.setSliceViewerLayers(background=syntheticNode, foreground=overlayNode,
                                             foregroundOpacity=opacity)
            return
        for viewName in layoutManager.sliceViewNames():
            composite = layoutManager.sliceWidget(viewName).mrmlSliceCompositeNode()
            if composite.GetBackgroundVolumeID() == syntheticNode.GetID():
                composite.SetForegroundVolumeID(overlayNode.GetID())
                composite.SetForegroundOpacity(opacity)

    @staticmethod
    def showSideBySide(syntheticNode, inputNode) -> None:
        """Synthetic volume in the left (red) view, an input in the right (yellow) one, both axial and linked."""
        slicer.util.setSliceViewerLayers(background=syntheticNode, foreground=None, fit=True)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (batch or test runs)
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for viewName, volume in (("Red", syntheticNode), ("Yellow", inputNode)):
            sliceWidget = layoutManager.sliceWidget(viewName)
            sliceWidget.mrmlSliceNode().SetOrientation("Axial")
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(volume.GetID())
            composite.SetLinkedControl(True)
            sliceWidget.fitSliceToBackground()
