"""Input volumes for the scene logic: read with Slicer's reader, the sample case, and which scene volume is which
contrast (synthetic volumes, label maps and error maps are never proposed).

Example (slicer-core):
    >>> logic = SceneLogic(new_scene())                                    # doctest: +SKIP
    >>> nodes = logic.loadSampleCase()                                     # doctest: +SKIP
    >>> logic.guessInputNodes(["t1n", "t1c", "t2f"])["t2f"].GetName()      # doctest: +SKIP
    'TCGA-HT-7882-t2f'
"""

from __future__ import annotations

import os
from typing import Optional, Union

from .nodes import LABEL_MAP_VOLUME, SCALAR_VOLUME, read_volume_node

SAMPLE_CONTRASTS = ("t1n", "t1c", "t2f")


class InputLogic:
    """Reading and guessing inputs for :class:`.logic.SceneLogic` (``self.scene``: the MRML scene)."""

    def readVolume(self, path: Union[str, os.PathLike], name: Optional[str] = None, labelMap: bool = False):
        """A volume file read by Slicer's own reader into a new node (a label map with ``labelMap=True``)."""
        return read_volume_node(self.scene, path, name=name, labelMap=labelMap)

    def loadSampleCase(self) -> dict:
        """The bundled case TCGA-HT-7882: t1n, t1c, t2f as volumes and "seg" (lesion mask) as a label map."""
        from ..resources import sample_case_dir

        folder = sample_case_dir()
        nodes = {c: self.readVolume(folder / f"{folder.name}-{c}.nii.gz") for c in SAMPLE_CONTRASTS}
        nodes["seg"] = self.readVolume(folder / f"{folder.name}-seg.nii.gz", labelMap=True)
        return nodes

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
