"""3D Slicer module: impute a missing MR contrast with CollaGAN, and score it against an acquired volume.

A thin shell: the panel (Widget) wires the GUI to the logic; the Logic class delegates the work on the scene to
``CollaGANImputeLib.scene.logic.SceneLogic``, which needs MRML but not Qt (the project's tests run it on the
slicer-core wheel), and that in turn calls the same core as the ``collagan-impute`` CLI. Volumes cross between
nodes and SimpleITK in ``CollaGANImputeLib.scene.nodes`` (RAS <-> LPS). The GUI never blocks: the work runs in
short steps on a Qt timer.

Console example (Slicer's Python console; see docs/SLICER_MODULE.md for more):
    >>> logic = slicer.util.getModuleLogic("CollaGANImpute")
    >>> node = logic.imputeNodes({"t1n": getNode("case-t1n"), "t2f": getNode("case-t2f")}, target="t1c")
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
from typing import Annotated, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Import name -> pip requirement. SimpleITK and numpy ship with Slicer; torch preferably comes from the
#: PyTorch extension, which picks the CUDA build matching the driver.
PYTHON_REQUIREMENTS = {"torch": "torch>=2.0", "skimage": "scikit-image>=0.20"}
MODEL_FILE_ITEM = "Model file..."
SAMPLE_CASE = "TCGA-HT-7882"
SAMPLE_CONTRASTS = ("t1n", "t1c", "t2f")
PAPER = ("Lee D, Kim J, Moon W-J, Ye JC. CollaGAN: Collaborative GAN for Missing Image Data Imputation. "
         "CVPR 2019, pp. 2487-2496.")


#
# Module
#


class CollaGANImpute(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CollaGAN Impute")
        self.parent.categories = [_("Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["CollaGANImpute developers"]
        self.parent.helpText = _(
            "Imputes a missing MR contrast (for example the contrast-enhanced T1) from the contrasts that were "
            "acquired, with a CollaGAN generator (collaborative GAN). Pick a model, one volume per available "
            "contrast, and press <b>Impute missing contrast</b>. The result is a new volume named "
            "'&lt;contrast&gt; (synthetic, CollaGAN)', labeled synthetic in its node attributes: it was not "
            "acquired and must not be used for diagnosis. Researchers can score it against an acquired volume "
            "(NMSE, PSNR, SSIM, lesion scores, error map, per-slice SSIM) in the Compare section. "
            "The same computations run from the Python console and the collagan-impute command line."
        )
        self.parent.helpText += self.getDefaultModuleDocumentationLink()
        self.parent.acknowledgementText = _(
            "Method: " + PAPER + " "
            "Sample case TCGA-HT-7882: TCGA-LGG collection (The Cancer Imaging Archive) as curated by Buda et al., "
            "Computers in Biology and Medicine 2019, and Mazurowski et al., J Neurooncol 2017; licensed "
            "CC BY-NC-SA 4.0 (attribution, non-commercial, share-alike), research use only. Bundled models "
            "trained on that collection carry the same licence."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def sampleCaseFolder() -> Optional[pathlib.Path]:
    """The bundled sample case: <module>/Resources/SampleData when installed, <repo>/Resources in a checkout."""
    here = pathlib.Path(__file__).resolve().parent
    for resources in (here / "Resources", here.parent / "Resources"):
        folder = resources / "SampleData" / SAMPLE_CASE
        if folder.is_dir():
            return folder
    return None


def loadSampleCase(source=None) -> list:
    """Load the bundled case: three contrasts as volumes, the lesion mask as a label map."""
    folder = sampleCaseFolder()
    if folder is None:
        raise RuntimeError(f"The sample case {SAMPLE_CASE} is not installed; reinstall the CollaGAN extension.")
    nodes = [slicer.util.loadVolume(str(folder / f"{SAMPLE_CASE}-{c}.nii.gz")) for c in SAMPLE_CONTRASTS]
    nodes.append(slicer.util.loadLabelVolume(str(folder / f"{SAMPLE_CASE}-seg.nii.gz")))
    return nodes


def registerSampleData():
    """Add the bundled LGG case to the Sample Data module (files are local: no download)."""
    import SampleData

    folder = sampleCaseFolder()
    if folder is None:
        return
    names = [f"{SAMPLE_CASE}-{c}" for c in (*SAMPLE_CONTRASTS, "seg")]
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CollaGAN",
        sampleName=f"CollaGAN LGG case {SAMPLE_CASE}",
        uris=[(folder / f"{name}.nii.gz").as_uri() for name in names],
        fileNames=[f"{name}.nii.gz" for name in names],
        nodeNames=names,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "CollaGANSample.png"),
        loadFileType=["VolumeFile", "VolumeFile", "VolumeFile", "LabelMapVolumeFile"],
        customDownloader=loadSampleCase,
    )


#
# Parameter node
#


@parameterNodeWrapper
class CollaGANImputeParameterNode:
    """Panel state saved with the scene. Per-contrast inputs are node references named 'input_<contrast>'
    (the model decides which contrasts exist, so they cannot be fixed fields)."""

    modelName: str = ""
    modelFile: pathlib.Path
    target: str = ""
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    batchSize: Annotated[int, WithinRange(1, 64)] = 8
    syntheticVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    lesionVolume: vtkMRMLScalarVolumeNode


#
# Widget
#


class CollaGANImputeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: model, inputs, target, device, impute/cancel, compare."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[CollaGANImputeLogic] = None
        self._parameterNode: Optional[CollaGANImputeParameterNode] = None
        self._parameterNodeGuiTag = None
        self._inputSelectors: dict = {}
        self._job = None
        self._jobReference = None
        self._timer = qt.QTimer()
        self._timer.setInterval(0)  # one short step whenever the event loop is idle
        self._timer.timeout.connect(self.onTimerTick)
        self._jobInputs: dict = {}
        self._lastComparison = None
        self._updatingModel = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CollaGANImpute.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CollaGANImputeLogic()

        self.ui.progressBar.setVisible(False)
        self.ui.syntheticWarningLabel.setVisible(False)
        self.ui.scoresTableView.setVisible(False)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChoiceChanged)
        self.ui.modelFilePathLineEdit.currentPathChanged.connect(self.onModelChoiceChanged)
        self.ui.targetComboBox.currentIndexChanged.connect(self.onTargetChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.updateDeviceInfo)
        self.ui.guessInputsButton.clicked.connect(self.onGuessInputs)
        self.ui.imputeButton.clicked.connect(self.onImputeButton)
        self.ui.compareButton.clicked.connect(self.onCompareButton)
        self.ui.exportCsvButton.clicked.connect(self.onExportCsv)
        self.ui.syntheticSelector.currentNodeChanged.connect(self.updateButtons)
        self.ui.referenceSelector.currentNodeChanged.connect(self.updateButtons)

        self.initializeParameterNode()
        self.refreshDependencyState()

    def cleanup(self) -> None:
        self.cancelRunningJob()
        self.removeObservers()
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.logic.dependenciesReady():
            self.onGuessInputs()

    def exit(self) -> None:
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRunningJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode: Optional[CollaGANImputeParameterNode]) -> None:
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        self._parameterNodeGuiTag = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self.updateButtons()

    # --- dependencies -------------------------------------------------------------------------------------

    def refreshDependencyState(self) -> None:
        missing = self.logic.missingDependencies()
        self.ui.dependenciesFrame.setVisible(bool(missing))
        for section in (self.ui.modelCollapsibleButton, self.ui.inputsCollapsibleButton,
                        self.ui.imputeCollapsibleButton, self.ui.compareCollapsibleButton):
            section.setEnabled(not missing)
        if missing:
            self.ui.dependenciesLabel.text = _(
                "This module needs the Python packages {packages}, which are not installed yet. Press the button "
                "to install them (internet access needed; you will be asked first). For a GPU build of PyTorch "
                "install the 'PyTorch' extension from the Extensions Manager."
            ).format(packages=", ".join(missing))
            return
        self.populateModels()
        self.updateDeviceInfo()

    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            self.logic.installDependencies(askConfirmation=True)
        self.refreshDependencyState()

    # --- model --------------------------------------------------------------------------------------------

    def populateModels(self) -> None:
        self._updatingModel = True
        try:
            self.ui.modelComboBox.clear()
            for name in self.logic.bundledModelNames():
                self.ui.modelComboBox.addItem(name)
            self.ui.modelComboBox.addItem(MODEL_FILE_ITEM)
            saved = self._parameterNode.modelName if self._parameterNode else ""
            index = self.ui.modelComboBox.findText(saved) if saved else 0
            self.ui.modelComboBox.setCurrentIndex(max(index, 0))
        finally:
            self._updatingModel = False
        self.onModelChoiceChanged()

    def selectedModelSource(self) -> Optional[str]:
        """Bundled model name, or the model file path, or None when nothing usable is chosen."""
        choice = self.ui.modelComboBox.currentText
        if choice and choice != MODEL_FILE_ITEM:
            return choice
        path = self.ui.modelFilePathLineEdit.currentPath
        return path if path and os.path.isfile(path) else None

    def onModelChoiceChanged(self, *args) -> None:
        if self._updatingModel:
            return
        choice = self.ui.modelComboBox.currentText
        self.ui.modelFilePathLineEdit.setVisible(choice == MODEL_FILE_ITEM)
        self.ui.modelFileLabel.setVisible(choice == MODEL_FILE_ITEM)
        if self._parameterNode:
            self._parameterNode.modelName = choice
        source = self.selectedModelSource()
        contrasts: list = []
        if source is None:
            self.ui.modelInfoLabel.text = (
                _("No trained model is bundled with this installation yet: choose a CollaGAN model file (.pt) "
                  "exported by training/collagan_train/export.py.") if not self.logic.bundledModelNames()
                else _("Choose a CollaGAN model file (.pt)."))
        else:
            try:
                card = self.logic.modelCard(source)
                contrasts = list(card.contrasts)
                self.ui.modelInfoLabel.text = card.summary()
            except Exception as error:  # a bad file: say why in the panel instead of a traceback
                self.ui.modelInfoLabel.text = _("This model cannot be used: {error}").format(error=error)
        self.rebuildInputSelectors(contrasts)
        self.updateButtons()

    # --- inputs and target ----------------------------------------------------------------------------------

    def rebuildInputSelectors(self, contrasts: list) -> None:
        layout = self.ui.inputSelectorsFrame.layout()
        for label, selector in self._inputSelectors.values():
            layout.removeWidget(label)
            layout.removeWidget(selector)
            label.deleteLater()
            selector.deleteLater()
        self._inputSelectors = {}
        for contrast in contrasts:
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False  # label maps are not MR contrasts
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.renameEnabled = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.toolTip = _("Acquired {contrast} volume; leave empty if it is missing.").format(contrast=contrast)
            if self._parameterNode:
                selector.setCurrentNode(self.logic.parameters()["inputs"].get(contrast))
            selector.currentNodeChanged.connect(lambda node, c=contrast: self.onInputChanged(c, node))
            label = qt.QLabel(f"{contrast}:")
            layout.addRow(label, selector)
            self._inputSelectors[contrast] = (label, selector)
        self.onGuessInputs()

    def onGuessInputs(self) -> None:
        """Fill empty selectors from the names of loaded volumes (synthetic ones never)."""
        if not self._inputSelectors:
            self.updateTargets()
            return
        current = {c: sel.currentNode() for c, (_label, sel) in self._inputSelectors.items()}
        guesses = self.logic.guessInputNodes(list(self._inputSelectors), taken=[n for n in current.values() if n])
        for contrast, node in guesses.items():
            if current[contrast] is None and node is not None:
                self._inputSelectors[contrast][1].setCurrentNode(node)
        self.updateTargets()

    def onInputChanged(self, contrast: str, node) -> None:
        if self._parameterNode:
            self.logic.setParameters(inputs={contrast: node})
        self.updateTargets()

    def selectedInputs(self) -> dict:
        return {c: sel.currentNode() for c, (_label, sel) in self._inputSelectors.items()}

    def updateTargets(self) -> None:
        contrasts = list(self._inputSelectors)
        chosen = self.ui.targetComboBox.currentText
        wasBlocked = self.ui.targetComboBox.blockSignals(True)
        self.ui.targetComboBox.clear()
        for contrast in contrasts:
            self.ui.targetComboBox.addItem(contrast)
        self.ui.targetComboBox.blockSignals(wasBlocked)
        inputs = self.selectedInputs()
        target = self.logic.defaultTarget(contrasts, inputs)
        # Keep the user's choice unless a contrast is missing and the choice is not one of the missing.
        anyMissing = any(inputs.get(c) is None for c in contrasts)
        if chosen in contrasts and (inputs.get(chosen) is None or not anyMissing):
            target = chosen
        if target:
            self.ui.targetComboBox.setCurrentText(target)
        self.onTargetChanged()

    def onTargetChanged(self, *args) -> None:
        if self._parameterNode:
            self._parameterNode.target = self.ui.targetComboBox.currentText
        self.updateButtons()

    # --- device -------------------------------------------------------------------------------------------

    def updateDeviceInfo(self, *args) -> None:
        if not self.logic.dependenciesReady():
            return
        self.ui.deviceInfoLabel.text = self.logic.describeDevice(self.ui.deviceComboBox.currentText)

    # --- imputation ---------------------------------------------------------------------------------------

    def updateButtons(self, *args) -> None:
        if not hasattr(self, "ui"):
            return
        running = self._job is not None
        target = self.ui.targetComboBox.currentText
        inputs = {c: n for c, n in self.selectedInputs().items() if n is not None and c != target}
        ready = bool(self.selectedModelSource()) and bool(target) and bool(inputs)
        self.ui.imputeButton.enabled = running or ready
        self.ui.imputeButton.text = _("Cancel") if running else _("Impute missing contrast")
        if not running:
            self.ui.imputeButton.toolTip = (
                _("Impute {target} from {inputs}.").format(target=target, inputs=" + ".join(inputs)) if ready
                else _("Choose a model and at least one input volume."))
        self.ui.compareButton.enabled = (not running and self.ui.syntheticSelector.currentNode() is not None
                                         and self.ui.referenceSelector.currentNode() is not None)

    def onImputeButton(self) -> None:
        if self._job is not None:
            self.cancelRunningJob()
            return
        target = self.ui.targetComboBox.currentText
        nodes = {c: n for c, n in self.selectedInputs().items() if n is not None}
        self._jobReference = nodes.get(target)  # a complete case: its own volume is the ground truth
        inputNodes = {c: n for c, n in nodes.items() if c != target}
        with slicer.util.tryWithErrorDisplay(_("Imputation could not start."), waitCursor=True):
            try:
                model = self.logic.loadModel(self.selectedModelSource(), device="cpu")
                self._job = self.logic.startImputation(
                    inputNodes, model, target, device=self.ui.deviceComboBox.currentText,
                    batchSize=self.ui.batchSizeSpinBox.value, uncertainty=self.ui.uncertaintyCheckBox.checked,
                    register=self.ui.alignCheckBox.checked)
            except Exception as error:
                raise RuntimeError(self.logic.plainError(error)) from error
        if self._job is None:
            return
        self._jobInputs = inputNodes
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = _("Preparing the inputs (alignment, head mask, intensity scaling)...")
        self.updateButtons()
        self._timer.start()

    def onTimerTick(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        try:
            finished = job.step()
        except Exception as error:
            self.finishJob()
            if self.logic.isCancellation(error):
                self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
            else:
                logging.exception("CollaGAN imputation failed")
                self.ui.statusLabel.text = _("Failed.")
                slicer.util.errorDisplay(self.logic.plainError(error), windowTitle=_("CollaGAN imputation failed"))
            return
        self.ui.progressBar.setValue(int(100 * job.progress))
        if job.total_slices and job.current_pass:
            self.ui.statusLabel.text = _("Uncertainty of {target}: prediction {index} of {count}, slice {done} of "
                                         "{total} on {device}").format(
                target=job.target, index=job.current_pass, count=job.passes - 1, done=job.slices_done,
                total=job.total_slices, device=job.device.type.upper())
        elif job.total_slices:
            self.ui.statusLabel.text = _("Imputing {target}: slice {done} of {total} on {device}").format(
                target=job.target, done=job.slices_done, total=job.total_slices, device=job.device.type.upper())
        if not finished:
            return
        self.finishJob()
        with slicer.util.tryWithErrorDisplay(_("The result could not be added to the scene."), waitCursor=True):
            node = self.logic.addResultToScene(job, showNextTo=next(iter(self._jobInputs.values()), None))
            self.showSyntheticBanner(node)
            self.showUncertaintyLegend(node)
            if self._parameterNode:  # pre-fill Compare: the new volume, and the acquired one if there is one
                self._parameterNode.syntheticVolume = node
                if self._jobReference is not None:
                    self._parameterNode.referenceVolume = self._jobReference
            notes = " ".join(job.notes + job.warnings)
            self.ui.statusLabel.text = _("Done: '{name}' added. {notes}").format(name=node.GetName(), notes=notes)

    def finishJob(self) -> None:
        self._timer.stop()
        self._job = None
        self.ui.progressBar.setVisible(False)
        self.updateButtons()

    def cancelRunningJob(self) -> None:
        """Ask the running job to stop; its next step raises Cancelled and the scene stays unchanged."""
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def showSyntheticBanner(self, node) -> None:
        self.ui.syntheticWarningLabel.text = self.logic.bannerText(node)
        self.ui.syntheticWarningLabel.setVisible(True)

    def showUncertaintyLegend(self, node) -> None:
        hasMap = self.logic.uncertaintyNodeFor(node) is not None
        self.ui.uncertaintyLegendLabel.text = self.logic.uncertaintyLegendText(node) if hasMap else ""
        self.ui.uncertaintyLegendLabel.setVisible(hasMap)

    # --- comparison ---------------------------------------------------------------------------------------

    def onCompareButton(self) -> None:
        synthetic = self.ui.syntheticSelector.currentNode()
        reference = self.ui.referenceSelector.currentNode()
        target = synthetic.GetAttribute("collagan_target") if synthetic else None
        inputNodes = {c: n for c, n in self.selectedInputs().items() if n is not None and c != target
                      and n is not reference and n is not synthetic}
        with slicer.util.tryWithErrorDisplay(_("Comparison failed."), waitCursor=True):
            try:
                self._lastComparison = self.logic.compare(
                    synthetic, reference, inputNodes, lesionNode=self.ui.lesionSelector.currentNode(), show=True)
            except Exception as error:
                raise RuntimeError(self.logic.plainError(error)) from error
            outputs = self._lastComparison
            self.ui.scoresTableView.setMRMLTableNode(outputs.tableNode)
            self.ui.scoresTableView.setVisible(True)
            self.ui.errorLegendLabel.text = outputs.legendText + " " + _("Per-slice SSIM is in the plot view.")
            self.ui.exportCsvButton.enabled = True

    def onExportCsv(self) -> None:
        if self._lastComparison is None:
            return
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Export scores"), "collagan-scores.csv", "CSV (*.csv)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            written = self.logic.exportScores(self._lastComparison, path)
            slicer.util.showStatusMessage(_("Scores written to {path}").format(path=written), 5000)


#
# Logic
#


class CollaGANImputeLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, usable from the Python console without the widget.

    A thin shell: the work on the scene is done by ``CollaGANImputeLib.scene.logic.SceneLogic`` (Qt-free; the
    same code runs on the slicer-core wheel in the project's tests and in other front ends). This class adds
    what needs the Slicer application: installing the Python packages and showing results in the views.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    @property
    def core(self):
        """The Qt-free SceneLogic on slicer.mrmlScene, created on first use (it imports the core, hence torch:
        the panel asks for it only once the dependencies are installed)."""
        if self._core is None:
            from CollaGANImputeLib.scene.logic import SceneLogic

            self._core = SceneLogic(slicer.mrmlScene)
        return self._core

    @property
    def lastResults(self) -> dict:
        return self.core.lastResults

    def getParameterNode(self) -> CollaGANImputeParameterNode:
        return CollaGANImputeParameterNode(super().getParameterNode())

    # --- dependencies -------------------------------------------------------------------------------------

    @staticmethod
    def missingDependencies() -> list:
        """Pip requirements whose package cannot be imported (checked without importing it)."""
        return [req for module, req in PYTHON_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]

    def dependenciesReady(self) -> bool:
        return not self.missingDependencies()

    def installDependencies(self, askConfirmation: bool = True) -> bool:
        """Install torch (PyTorch extension when present) and scikit-image; True when both import afterwards.

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

    # --- the Qt-free logic (CollaGANImputeLib.scene.logic.SceneLogic), one line each ------------------------

    def bundledModelNames(self) -> list:
        return self.core.bundledModelNames()

    def loadModel(self, source: Optional[str] = None, device: str = "cpu"):
        """A bundled model by name, a model file by path, or the default bundled model (None); cached."""
        return self.core.loadModel(source, device=device)

    def modelCard(self, source: str):
        return self.core.modelCard(source)

    def isSynthetic(self, node) -> bool:
        return self.core.isSynthetic(node)

    def guessInputNodes(self, contrasts: list, taken: tuple = ()) -> dict:
        """Scalar volumes of the scene matched to the contrasts by name (label maps and synthetic excluded)."""
        return self.core.guessInputNodes(contrasts, taken=taken)

    def defaultTarget(self, contrasts: list, inputs: dict) -> Optional[str]:
        return self.core.defaultTarget(contrasts, inputs)

    def describeDevice(self, choice: str) -> str:
        return self.core.describeDevice(choice)

    def setParameters(self, inputs: Optional[dict] = None, **values) -> None:
        self.core.setParameters(inputs=inputs, **values)

    def parameters(self) -> dict:
        return self.core.parameters()

    def startImputation(self, inputNodes: dict, model, target: str, device: str = "auto", batchSize: int = 8,
                        cancel=None, precision: str = "auto", uncertainty: bool = False, allowSynthetic: bool = False,
                        register: bool = False, runtime: str = "auto"):
        """Copy the input volumes out of the scene and return a ChunkedImputation to step (GUI) or run;
        ``uncertainty`` also computes the uncertainty map; a synthetic input node is refused unless
        ``allowSynthetic`` (then named in the result's provenance); ``register`` aligns the inputs to the first one
        first; ``runtime`` picks what runs the model (``auto``: the fastest here)."""
        return self.core.startImputation(inputNodes, model, target, device=device, batchSize=batchSize,
                                         cancel=cancel, precision=precision, uncertainty=uncertainty,
                                         allowSynthetic=allowSynthetic, register=register, runtime=runtime)

    def addResultToScene(self, job, showNextTo=None):
        """Add the finished job's image as '<target> (synthetic, CollaGAN)', shown beside ``showNextTo``; its
        uncertainty map, if computed, as a coloured overlay on it."""
        node = self.core.addResultToScene(job)
        if showNextTo is not None:
            self.showSideBySide(node, showNextTo)
        uncertainty = self.uncertaintyNodeFor(node)
        if uncertainty is not None:
            self.showOverlay(node, uncertainty)
        return node

    def uncertaintyNodeFor(self, syntheticNode):
        """The uncertainty map computed with a synthetic volume (None if none was)."""
        return self.core.uncertaintyNodeFor(syntheticNode)

    def uncertaintyLegendText(self, syntheticNode) -> str:
        return self.core.uncertaintyLegendText(syntheticNode)

    def imputeNodes(self, inputNodes: dict, model=None, target: Optional[str] = None, device: str = "auto",
                    batchSize: int = 8, progress: Optional[Callable[[float], None]] = None, cancel=None,
                    precision: str = "auto", uncertainty: bool = False, allowSynthetic: bool = False,
                    register: bool = False, runtime: str = "auto"):
        """Console use: impute ``target`` (default: the first missing contrast) from scene volumes; returns the
        new node. ``model`` is a LoadedModel, a bundled model name, a file path, or None for the default.
        ``uncertainty``: also the uncertainty map (``uncertaintyNodeFor(node)``). ``allowSynthetic``: use a
        synthetic input volume (refused by default; named in the result's provenance). ``register``: align the
        inputs to the first one first (rigid; the transforms are in the node's ``collagan_registration`` attribute)."""
        return self.core.imputeNodes(inputNodes, model=model, target=target, device=device, batchSize=batchSize,
                                     progress=progress, cancel=cancel, precision=precision, uncertainty=uncertainty,
                                     allowSynthetic=allowSynthetic, register=register, runtime=runtime)

    def imputeCaseFolder(self, folder: str, model=None, outDir: Optional[str] = None, load: bool = True, **kwargs):
        """Impute a BraTS-named case folder from disk (exactly the CLI's core call), optionally loading results."""
        return self.core.imputeCaseFolder(folder, model=model, outDir=outDir, load=load, **kwargs)

    def isCancellation(self, error: Exception) -> bool:
        return self.core.isCancellation(error)

    def plainError(self, error: Exception) -> str:
        return self.core.plainError(error)

    def bannerText(self, node) -> str:
        return self.core.bannerText(node)

    def compare(self, syntheticNode, referenceNode, inputNodes: dict, lesionNode=None, show: bool = True):
        """Score a synthetic volume against the acquired one: a table node, an error-map volume with a colour
        legend and a per-slice SSIM plot (SceneLogic.compare); ``show`` puts them in the views."""
        outputs = self.core.compare(syntheticNode, referenceNode, inputNodes, lesionNode=lesionNode)
        if show:
            slicer.util.setSliceViewerLayers(background=referenceNode, foreground=outputs.errorNode,
                                             foregroundOpacity=0.6,
                                             label=lesionNode if lesionNode is not None and lesionNode.IsA(
                                                 "vtkMRMLLabelMapVolumeNode") else None)
            slicer.modules.plots.logic().ShowChartInLayout(outputs.chartNode)
        elif outputs.legendNode is not None:
            outputs.legendNode.SetVisibility(False)
        return outputs

    def exportScores(self, outputs, path: str) -> pathlib.Path:
        return self.core.exportScores(outputs, path)

    # --- Slicer application only ----------------------------------------------------------------------------

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


#
# Test (runs inside Slicer only; the project's pytest suite checks the Slicer-free parts)
#


class CollaGANImputeTest(ScriptedLoadableModuleTest):
    """Sample case end to end: impute, geometry, labels, scores, and cancel leaving the scene unchanged."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ImputeSampleCase()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()
        self.setUp()
        self.test_WidgetCancelButton()
        self.setUp()
        self.test_ParameterNodeSharedWithPanel()
        self.setUp()
        self.test_UncertaintyOverlay()

    def _model(self):
        """The default bundled model, or a small real TorchScript conv net exported here when none is bundled."""
        logic = CollaGANImputeLogic()
        if logic.bundledModelNames():
            return logic.loadModel(None)
        import torch
        from CollaGANImputeLib import ModelCard, load_model, save_model

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))
        path = os.path.join(slicer.app.temporaryPath, "collagan-selftest.pt")
        save_model(net, ModelCard(name="selftest", contrasts=list(SAMPLE_CONTRASTS), licence="test only"), path)
        return load_model(path)

    def _sampleNodes(self) -> dict:
        nodes = loadSampleCase()
        return dict(zip((*SAMPLE_CONTRASTS, "seg"), nodes))

    def test_ImputeSampleCase(self) -> None:
        self.delayDisplay("Imputing t1c of the sample case")
        import numpy as np

        logic = CollaGANImputeLogic()
        nodes = self._sampleNodes()
        guessed = logic.guessInputNodes(list(SAMPLE_CONTRASTS))
        self.assertEqual({c: n.GetName() for c, n in guessed.items()},
                         {c: f"{SAMPLE_CASE}-{c}" for c in SAMPLE_CONTRASTS})
        node = logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, model=self._model(), target="t1c",
                                 device="cpu")
        self.assertEqual(node.GetAttribute("collagan_synthetic"), "true")
        self.assertEqual(node.GetAttribute("collagan_inputs"), "t1n,t2f")
        self.assertTrue(node.GetName().startswith("t1c (synthetic, CollaGAN)"))
        self.assertEqual(node.GetImageData().GetDimensions(), nodes["t1n"].GetImageData().GetDimensions())
        produced, expected = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(produced)
        nodes["t1n"].GetIJKToRASMatrix(expected)
        for i in range(4):
            for j in range(4):
                self.assertAlmostEqual(produced.GetElement(i, j), expected.GetElement(i, j), places=4)
        self.assertTrue(np.isfinite(slicer.util.arrayFromVolume(node)).all())

        outputs = logic.compare(node, nodes["t1c"], {"t1n": nodes["t1n"], "t2f": nodes["t2f"]},
                                lesionNode=nodes["seg"], show=False)
        scores = outputs.comparison.scores
        for key in ("nmse", "psnr", "ssim", "lesion_nmse", "lesion_ssim"):
            self.assertTrue(np.isfinite(scores[key]), key)
        self.assertGreater(scores["lesion_voxels"], 0)
        self.assertEqual(outputs.tableNode.GetNumberOfRows(), len(scores))  # one row per score (v2 included)
        self.assertEqual(outputs.errorNode.GetDisplayNode().GetWindowLevelMax(), outputs.comparison.error_limit)
        csvPath = os.path.join(slicer.app.temporaryPath, "collagan-selftest-scores.csv")
        self.assertTrue(os.path.isfile(logic.exportScores(outputs, csvPath)))
        self.delayDisplay("Imputation and comparison passed")

    def test_UncertaintyOverlay(self) -> None:
        self.delayDisplay("Imputing t1c with its uncertainty map")
        logic = CollaGANImputeLogic()
        nodes = self._sampleNodes()
        node = logic.imputeNodes({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, model=self._model(), target="t1c",
                                 device="cpu", uncertainty=True)
        overlay = logic.uncertaintyNodeFor(node)
        self.assertIsNotNone(overlay)
        self.assertEqual(overlay.GetAttribute("collagan_uncertainty"), "true")
        self.assertEqual(overlay.GetImageData().GetDimensions(), node.GetImageData().GetDimensions())
        self.assertIn("disagree by more than 0.2", logic.uncertaintyLegendText(node))
        logic.showOverlay(node, overlay)
        self.delayDisplay("Uncertainty overlay passed")

    def test_CancelLeavesSceneUnchanged(self) -> None:
        self.delayDisplay("Cancelling an imputation")
        logic = CollaGANImputeLogic()
        nodes = self._sampleNodes()
        before = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.startImputation({"t1n": nodes["t1n"], "t2f": nodes["t2f"]}, self._model(), "t1c", device="cpu")
        job.step()  # preparation
        job.step()  # first slices
        job.cancel()
        with self.assertRaises(Exception) as raised:
            job.step()
        self.assertTrue(logic.isCancellation(raised.exception))
        self.assertIsNone(job.result)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Cancel passed")

    def test_ParameterNodeSharedWithPanel(self) -> None:
        """The Qt-free logic writes the keys the panel's parameterNodeWrapper reads, on Slicer's own node."""
        self.delayDisplay("Parameter node keys")
        logic = CollaGANImputeLogic()
        nodes = self._sampleNodes()
        logic.setParameters(inputs={"t1n": nodes["t1n"]}, modelName="selftest", target="t1c",
                            referenceVolume=nodes["t1c"])
        wrapped = logic.getParameterNode()
        self.assertEqual(wrapped.parameterNode.GetID(), logic.core.getParameterNode().GetID())
        self.assertEqual((wrapped.modelName, wrapped.target), ("selftest", "t1c"))
        self.assertEqual(wrapped.referenceVolume.GetID(), nodes["t1c"].GetID())
        self.assertEqual(logic.parameters()["inputs"]["t1n"].GetID(), nodes["t1n"].GetID())
        self.delayDisplay("Parameter node passed")

    def test_WidgetCancelButton(self) -> None:
        self.delayDisplay("Impute button turns into Cancel")
        self._sampleNodes()
        widget = slicer.util.getModuleWidget("CollaGANImpute")
        if not widget.logic.bundledModelNames():
            self.delayDisplay("No bundled model: widget cancel test skipped (the logic cancel test ran)")
            return
        widget.onGuessInputs()
        widget.ui.targetComboBox.setCurrentText("t1c")
        before = slicer.mrmlScene.GetNumberOfNodes()
        widget.onImputeButton()
        self.assertEqual(widget.ui.imputeButton.text, "Cancel")
        widget.onImputeButton()  # = Cancel
        for _tick in range(5):
            slicer.app.processEvents()
        self.assertIsNone(widget._job)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Widget cancel passed")
