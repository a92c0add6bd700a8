"""The module's parameter node: its fields, declared once (:data:`FIELDS`), and how the logic reads and writes
them. The Slicer panel's ``parameterNodeWrapper`` (``CollaGANImputeParameterNode`` in ``CollaGANImpute.py``)
declares the same fields for its GUI bindings; a test checks the two agree.

Example (slicer-core):
    >>> logic = SceneLogic(new_scene())                                          # doctest: +SKIP
    >>> logic.setParameters(modelName="lgg-v3", target="t1c", batchSize=8)       # doctest: +SKIP
    >>> logic.parameters()["target"]                                             # doctest: +SKIP
    't1c'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Union

MODULE_NAME = "CollaGANImpute"
INPUT_PREFIX = "input_"


@dataclass(frozen=True)
class ParameterField:
    """One field of the panel's state: ``kind`` is ``text``, ``path``, ``int`` or ``volume`` (a node reference);
    ``default`` None: none; ``choices``/``within``: the values the panel offers.

    Example:
        >>> ParameterField("batchSize", "int", 8, within=(1, 64)).isVolume
        False
    """

    name: str
    kind: str
    default: Union[str, int, None] = None
    choices: tuple[str, ...] = ()
    within: Optional[tuple[int, int]] = None

    @property
    def isVolume(self) -> bool:
        return self.kind == "volume"


#: The panel's fields, in the order the panel's parameterNodeWrapper declares them.
FIELDS = (
    ParameterField("modelName", "text", ""),
    ParameterField("modelFile", "path"),
    ParameterField("target", "text", ""),
    ParameterField("device", "text", "auto", choices=("auto", "cuda", "cpu")),
    ParameterField("batchSize", "int", 8, within=(1, 64)),
    ParameterField("syntheticVolume", "volume"),
    ParameterField("referenceVolume", "volume"),
    ParameterField("lesionVolume", "volume"),
)
#: Parameter-node keys of the panel's fields (as Slicer's parameterNodeWrapper writes them).
PARAMETER_FIELDS = tuple(f.name for f in FIELDS if not f.isVolume)
VOLUME_FIELDS = tuple(f.name for f in FIELDS if f.isVolume)


class ParameterLogic:
    """Parameter-node I/O of :class:`.logic.SceneLogic` (``self.scene``: the MRML scene)."""

    def moduleParameterNode(self):
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

    def getParameterNode(self):
        """:meth:`moduleParameterNode` (the Slicer module's Logic returns its parameterNodeWrapper instead)."""
        return self.moduleParameterNode()

    def setParameters(self, inputs: Optional[Mapping[str, object]] = None, **values) -> None:
        """Store the panel's choices: ``modelName``, ``modelFile``, ``target``, ``device``, ``batchSize`` (text
        or numbers), ``syntheticVolume``/``referenceVolume``/``lesionVolume`` and ``inputs`` (contrast -> node
        or None) as node references. Same keys as the panel's parameterNodeWrapper, so either reads the other."""
        node = self.moduleParameterNode()
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
        node = self.moduleParameterNode()
        found: dict = {key: node.GetParameter(key) if node.GetParameter(key) else None for key in PARAMETER_FIELDS}
        found.update({key: node.GetNodeReference(key) for key in VOLUME_FIELDS})
        roles = [node.GetNthNodeReferenceRole(i) for i in range(node.GetNumberOfNodeReferenceRoles())]
        found["inputs"] = {role[len(INPUT_PREFIX):]: node.GetNodeReference(role) for role in roles
                           if role.startswith(INPUT_PREFIX)}
        return found
