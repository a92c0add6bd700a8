"""The Slicer module's self-test (Slicer's Reload and Test, and the generic module tests): the sample case end to
end in the running application: impute, geometry, labels, scores, the uncertainty overlay, cancel leaving the
scene unchanged, the panel's Cancel button and the parameter node shared with the panel. The module's
``CollaGANImputeTest`` (a ``ScriptedLoadableModuleTest``) inherits :class:`ModuleSelfTest` and names its Logic
class in ``logicClass``; the project's pytest suite checks the Slicer-free parts.

Example (Slicer's Python console):
    >>> slicer.util.getModuleWidget("CollaGANImpute").onReloadAndTest()      # doctest: +SKIP
"""

from __future__ import annotations

import os

import slicer
import vtk

from .application import SAMPLE_CONTRASTS, loadSampleCase, sampleCaseFolder


class ModuleSelfTest:
    """The self-test's steps; mixed into the module's ``ScriptedLoadableModuleTest`` (a ``unittest.TestCase``)."""

    #: The module's Logic class (``CollaGANImputeLogic``), set by the module.
    logicClass: type = object

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
        logic = self.logicClass()
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

        logic = self.logicClass()
        nodes = self._sampleNodes()
        guessed = logic.guessInputNodes(list(SAMPLE_CONTRASTS))
        self.assertEqual({c: n.GetName() for c, n in guessed.items()},
                         {c: f"{sampleCaseFolder().name}-{c}" for c in SAMPLE_CONTRASTS})
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
        logic = self.logicClass()
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
        logic = self.logicClass()
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
        logic = self.logicClass()
        nodes = self._sampleNodes()
        logic.setParameters(inputs={"t1n": nodes["t1n"]}, modelName="selftest", target="t1c",
                            referenceVolume=nodes["t1c"])
        wrapped = logic.getParameterNode()
        self.assertEqual(wrapped.parameterNode.GetID(), logic.moduleParameterNode().GetID())
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
