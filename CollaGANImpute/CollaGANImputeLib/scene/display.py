"""Colour tables, legends and the Compare section's nodes for the scene logic: the scores table, the signed error
map and the per-slice SSIM plot of a synthetic volume against an acquired one.

Example (slicer-core):
    >>> outputs = logic.compare(node, nodes["t1c"], inputs, lesionNode=nodes["seg"])     # doctest: +SKIP
    >>> outputs.comparison.scores["ssim"], outputs.tableNode.GetNumberOfRows()           # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import slicer
import vtk

from .nodes import image_from_node, node_from_image

try:  # Slicer's translation function; slicer-core has no Qt translations
    from slicer.i18n import tr
except ImportError:  # pragma: no cover - depends on the host
    def tr(text: str) -> str:
        return text

_ = tr

#: Slicer's diverging blue-white-red colour table (from its colour files); a scene without it gets an equal one.
ERROR_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
ERROR_COLOR_NAME = "DivergingBlueRed"
ERROR_LEGEND_TITLE = "Synthetic - acquired (p99 units)"
#: Slicer's Inferno colour table (from its colour files) for the uncertainty overlay; else an equal one is added.
UNCERTAINTY_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
UNCERTAINTY_COLOR_NAME = "Inferno"


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


class DisplayLogic:
    """Colour tables and comparison nodes of :class:`.logic.SceneLogic` (``self.scene``, ``self.lastResults``)."""

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
