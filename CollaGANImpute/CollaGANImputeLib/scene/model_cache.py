"""Models for the scene logic: bundled ones by name, files by path, loaded once and cached; the device they run on.

Example (slicer-core):
    >>> logic = SceneLogic(new_scene())                     # doctest: +SKIP
    >>> logic.loadModel(None) is logic.loadModel(None)      # the default bundled model, cached  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from typing import Optional

from .display import tr as _


class ModelLogic:
    """Model cache of :class:`.logic.SceneLogic` (``self._models``: (source, device) -> LoadedModel)."""

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

    @staticmethod
    def describeDevice(choice: str) -> str:
        from ..inference import describe_device, resolve_device

        try:
            return _("Runs on: {device}").format(device=describe_device(resolve_device(choice)))
        except Exception as error:
            return str(error)
