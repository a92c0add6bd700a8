"""3D Slicer module: impute a missing MR contrast with CollaGAN, and score it against an acquired volume.

A thin shell: the panel (Widget) wires the GUI to the logic; the Logic class inherits the work on the scene from
``CollaGANImputeLib.scene.logic.SceneLogic``, which needs MRML but not Qt (the project's tests run it on the
slicer-core wheel), and that in turn calls the same core as the ``collagan-impute`` CLI. Volumes cross between
nodes and SimpleITK in ``CollaGANImputeLib.scene.nodes`` (RAS <-> LPS). The GUI never blocks: the work runs in
short steps on a Qt timer.

Console example (Slicer's Python console; see docs/SLICER_MODULE.md for more):
    >>> logic = slicer.util.getModuleLogic("CollaGANImpute")
    >>> node = logic.imputeNodes({"t1n": getNode("case-t1n"), "t2f": getNode("case-t2f")}, target="t1c")
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Annotated, Optional

import qt
import slicer

# Torch-free at load time: the core (torch) loads on first use, after the panel has offered to install it.
from CollaGANImputeLib.scene.application import ApplicationLogic, registerSampleData
from CollaGANImputeLib.scene.logic import SceneLogic
from CollaGANImputeLib.scene.selftest import ModuleSelfTest
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

MODEL_FILE_ITEM = "Model file..."
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


class CollaGANImputeLogic(ScriptedLoadableModuleLogic, ApplicationLogic, SceneLogic):
    """Everything the panel does, usable from the Python console without the widget.

    The work on the scene is ``CollaGANImputeLib.scene.logic.SceneLogic``'s (Qt-free; the same code runs on the
    slicer-core wheel in the project's tests and in other front ends), on ``slicer.mrmlScene``;
    ``CollaGANImputeLib.scene.application.ApplicationLogic`` adds what needs the Slicer application: installing
    the Python packages and showing results in the views.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SceneLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self) -> CollaGANImputeParameterNode:
        return CollaGANImputeParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self))


#
# Test (runs inside Slicer only; the project's pytest suite checks the Slicer-free parts)
#


class CollaGANImputeTest(ModuleSelfTest, ScriptedLoadableModuleTest):
    """Sample case end to end: impute, geometry, labels, scores, and cancel leaving the scene unchanged. The steps
    are ``CollaGANImputeLib.scene.selftest``'s, first among the bases so that its runTest and setUp override the
    empty ones of ScriptedLoadableModuleTest."""

    logicClass = CollaGANImputeLogic
