"""What ``collagan-impute web`` hands back to the browser: the synthetic volume, its provenance and the comparison's
scores, each written by the core's writers (the CLI's) into a fresh folder inside the server's private upload
folder and sent to the page that asked (a call to the server: no other client receives it).

Example:
    >>> app.download_scores()      # a WebApp after Compare: the scores CSV as an attachment   # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


class ResultDownloads:
    """The page's downloads, for :class:`.web.WebApp` (which sets ``server``, ``logic``, ``model``, ``upload_dir``,
    ``result_node`` and ``comparison``)."""

    server: Any
    logic: Any
    model: Any
    upload_dir: Path
    result_node: Any
    comparison: Any

    def _fresh_folder(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.upload_dir))

    def _result_files(self) -> tuple[Path, Path]:
        """The synthetic volume as NIfTI (labeled in its header) and its JSON provenance sidecar, written as one
        set by the core (the CLI's writer)."""
        from .io import OutputSet
        from .provenance import sidecar_path, stage_imputed

        node = self.result_node
        result = self.logic.lastResults.get(node.GetID()) if node is not None else None
        if result is None:
            raise ValueError("Nothing to download: impute first.")
        target = node.GetAttribute("collagan_target")
        with OutputSet() as outputs:
            path = stage_imputed(outputs, result.images[target],
                                 self._fresh_folder() / f"{target}-synthetic-collagan.nii.gz", self.model,
                                 result.cases.get(target, result.case))
            outputs.commit()
        return path, sidecar_path(path)

    def download_volume(self):
        path, _ = self._result_files()
        return self.server.protocol.addAttachment(path.read_bytes())

    def download_sidecar(self):
        _, sidecar = self._result_files()
        return self.server.protocol.addAttachment(sidecar.read_bytes())

    def download_scores(self):
        """The last comparison's scores as the Slicer module's "Export scores" writes them (metric, value)."""
        from .scene.comparison import write_scores_csv

        if self.comparison is None or self.result_node is None:
            raise ValueError("Nothing to download: compare first.")
        node = self.result_node
        context = {"synthetic": node.GetName(), "model": self.model.card.name, "protocol": "v3"}
        path = write_scores_csv(self._fresh_folder() / "scores.csv", self.comparison.comparison.scores, context)
        return self.server.protocol.addAttachment(path.read_bytes())
