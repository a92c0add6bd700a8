"""``collagan-impute web``: the CollaGAN Impute panel as a web page, on 3D Slicer's own libraries (``trame-slicer``:
MRML, Slicer's readers and slice views rendered on the server and streamed to the browser).

Everything the page does goes through the Slicer module's Qt-free logic (:class:`.scene.logic.SceneLogic`):
reading, input matching, the stepwise imputation with progress and cancel, the labeled result node and the
comparison. This module only wires the page to it.

Safety: the server binds 127.0.0.1 unless ``--host`` says otherwise and only its own page (plus origins named with
``--allow-origin``) may drive it, with a per-server secret (:mod:`.web_guard`); uploads go to the server only, are
size-limited, checked before their data is read (:mod:`.web_uploads`), written with sanitized names to a private
temporary folder (mode 0700) that is deleted when the server stops; the banner, labels and status are written by
the server alone; the server runs one imputation at a time and all browser tabs share one session (one user per
server: put several servers behind an authenticating reverse proxy for several users, see docs/WEB.md).

Example (``pip install "collagan-impute[web]"``):
    collagan-impute web --port 8080            # then open http://127.0.0.1:8080
    >>> app = WebApp(model=None, device="cpu")                                           # doctest: +SKIP
    >>> app.start(host="127.0.0.1", port=8080)                                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional

from .web_downloads import ResultDownloads
from .web_uploads import MAX_UPLOAD_BYTES, UploadReceiver

#: State only the server writes: a client's change to one of these is dropped (the SYNTHETIC banner, labels, ...).
SERVER_OWNED_KEYS = ("banner", "result_name", "status", "error", "warnings", "progress", "running", "volume_items",
                     "label_items", "scores", "legend", "error_limit", "ssim_plot", "uncertainty_legend", "model_name",
                     "contrasts", "max_upload_mb", "trame__title")
INPUT_VIEW, RESULT_VIEW = "Input", "Synthetic"
ONE_JOB_TEXT = "This server runs one imputation at a time; all browser tabs share this session."


class WebApp(UploadReceiver, ResultDownloads):
    """The page and its server: one MRML scene (trame-slicer's SlicerApp), the module's SceneLogic on it."""

    def __init__(self, model: Optional[str] = None, device: str = "auto", precision: str = "auto",
                 server=None, runtime: str = "auto") -> None:
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        from .scene.logic import SceneLogic

        self.server = server or get_server("collagan_impute_web", client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        self.logic = SceneLogic(self.slicer_app.scene)
        self.device, self.precision, self.runtime = device, precision, runtime
        self.model = self.logic.loadModel(model, device="cpu")
        self.contrasts = list(self.model.card.contrasts)
        self.upload_dir = Path(tempfile.mkdtemp(prefix="collagan-web-"))  # mkdtemp: mode 0700, this user only
        atexit.register(self.cleanup)
        self._cancel: Optional[threading.Event] = None
        self._job_lock = threading.Lock()
        self.result_node = None
        self.comparison = None

        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        views = [ViewLayoutDefinition.slice_view("Axial", label=INPUT_VIEW, color="#888888"),
                 ViewLayoutDefinition.slice_view("Axial", label=RESULT_VIEW, color="#d32f2f")]
        self.layout_manager.register_layout("side-by-side", Layout(LayoutDirection.Horizontal, views))
        self.layout_manager.set_layout("side-by-side")
        # Linked views: scrolling one scrolls the other (Slicer's own link logic on the composite nodes).
        composites = self.slicer_app.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        for i in range(composites.GetNumberOfItems()):
            composites.GetItemAsObject(i).SetLinkedControl(True)

        self._init_state()
        self._build_ui()
        self.ctrl.on_server_exited.add(lambda **_: self.cleanup())
        self.ctrl.trigger("upload")(self.on_uploads)  # a call to the server: the bytes reach no other client
        self.ctrl.trigger("download_volume")(self.download_volume)
        self.ctrl.trigger("download_sidecar")(self.download_sidecar)
        self.ctrl.trigger("download_scores")(self.download_scores)

    # --- state ----------------------------------------------------------------------------------------------

    def _init_state(self) -> None:
        from .web_page import init_state

        init_state(self, MAX_UPLOAD_BYTES, ONE_JOB_TEXT)

    def _view(self, name: str):
        return self.slicer_app.view_manager.get_view(name)

    def _refresh_volumes(self, guess: bool = True) -> None:
        from .scene.nodes import LABEL_MAP_VOLUME

        volumes = self.logic.volumeNodes()
        self.state.volume_items = [{"title": n.GetName(), "value": n.GetID()} for n in volumes
                                   if not n.IsA(LABEL_MAP_VOLUME) and n.GetAttribute("collagan_error_map") != "true"
                                   and n.GetAttribute("collagan_uncertainty") != "true"]
        self.state.label_items = [{"title": n.GetName(), "value": n.GetID()} for n in volumes
                                  if n.IsA(LABEL_MAP_VOLUME)]
        if guess:
            guessed = self.logic.guessInputNodes(self.contrasts)
            for contrast, node in guessed.items():
                self.state[f"input_{contrast}"] = node.GetID() if node else None
            self.state.target = self.logic.defaultTarget(self.contrasts, guessed)
            self._default_reference()
            if self.state.label_items and not self.state.lesion:
                self.state.lesion = self.state.label_items[0]["value"]
        first = next((i for i in self._input_ids().values() if i), None)
        if first and self.result_node is None:
            self._show(INPUT_VIEW, first)

    def _default_reference(self) -> None:
        target = self.state.target
        self.state.reference = self._input_ids().get(target) if target else None

    def _input_ids(self) -> dict:
        return {c: self.state[f"input_{c}"] for c in self.contrasts}

    def _node(self, node_id: Optional[str]):
        return self.slicer_app.scene.GetNodeByID(node_id) if node_id else None

    def _show(self, view_name: str, background_id: Optional[str], foreground_id: Optional[str] = None,
              opacity: float = 0.0) -> None:
        view = self._view(view_name)
        view.set_background_volume_id(background_id)
        view.set_foreground_volume_id(foreground_id)
        view.set_foreground_opacity(opacity)
        view.fit_view_to_content()
        view.schedule_render()

    # --- loading --------------------------------------------------------------------------------------------

    def load_sample_case(self) -> None:
        self.state.error = ""
        try:
            self.logic.loadSampleCase()
        except Exception as error:  # shown on the page, the server goes on
            self.state.error = self.logic.plainError(error)
            return
        self._refresh_volumes()
        self.state.status = "Sample case TCGA-HT-7882 loaded (t1n, t1c, t2f, lesion mask)."

    # --- imputation -----------------------------------------------------------------------------------------

    def _input_nodes(self) -> dict:
        target = self.state.target
        return {c: self._node(i) for c, i in self._input_ids().items() if i and c != target and self._node(i)}

    def impute(self) -> None:
        if not self._job_lock.acquire(blocking=False):
            self.state.error = ONE_JOB_TEXT + " Wait for the running one or cancel it."
            return
        self.state.error = ""
        self.state.warnings = []
        try:
            inputs = self._input_nodes()
            if not self.state.target:
                raise ValueError("Choose the contrast to impute (target).")
            if not inputs:
                raise ValueError("Load a case and choose at least one input volume.")
            self._cancel = threading.Event()
            job = self.logic.startImputation(inputs, self.model, self.state.target, device=self.device,
                                             cancel=self._cancel, precision=self.precision, runtime=self.runtime,
                                             uncertainty=bool(self.state.uncertainty),
                                             register=bool(self.state.register))
        except Exception as error:
            self._job_lock.release()
            self.state.error = self.logic.plainError(error)
            return
        self.state.running = True
        self.state.progress = 0
        self.state.status = f"Imputing {self.state.target} from {' + '.join(inputs)}..."
        asyncio.ensure_future(self._run(job))

    async def _run(self, job) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not await loop.run_in_executor(None, job.step):  # steps in a worker: the page stays live
                with self.state:
                    self.state.progress = round(100 * job.progress)
            with self.state:
                self._show_result(self.logic.addResultToScene(job), job)
        except Exception as error:
            with self.state:
                cancelled = self.logic.isCancellation(error)
                self.state.status = "Cancelled: nothing was added." if cancelled else "Imputation failed."
                self.state.error = "" if cancelled else self.logic.plainError(error)
        finally:
            self._job_lock.release()
            with self.state:
                self.state.running = False

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.state.status = "Cancelling..."

    def _show_result(self, node, job) -> None:
        self.result_node = node
        self.comparison = None
        self.state.scores, self.state.legend, self.state.ssim_plot = [], "", ""
        self.state.result_name = node.GetName()
        self.state.banner = self.logic.bannerText(node)
        self.state.warnings = list(job.warnings) + list(job.notes)
        self.state.progress = 100
        first = next(iter(self._input_nodes().values()))
        self._show(INPUT_VIEW, first.GetID())
        uncertainty = self.logic.uncertaintyNodeFor(node)
        if uncertainty is not None:  # coloured where the predictions disagree, the synthetic image below
            self._show(RESULT_VIEW, node.GetID(), uncertainty.GetID(), 0.6)
            self.state.uncertainty_legend = self.logic.uncertaintyLegendText(node)
        else:
            self._show(RESULT_VIEW, node.GetID())
            self.state.uncertainty_legend = ""
        self._refresh_volumes(guess=False)
        self.state.status = f"Done: '{node.GetName()}' is shown beside '{first.GetName()}'."

    # --- comparison -----------------------------------------------------------------------------------------

    def compare(self) -> None:
        from .scene.comparison import score_table
        from .web_page import ssim_png

        self.state.error = ""
        try:
            reference = self._node(self.state.reference)
            if self.result_node is None or reference is None:
                raise ValueError("Impute first, then choose the acquired volume to compare with.")
            outputs = self.logic.compare(self.result_node, reference, self._input_nodes(),
                                         lesionNode=self._node(self.state.lesion))
        except Exception as error:
            self.state.error = self.logic.plainError(error)
            return
        self.comparison = outputs
        self.state.scores = [{"metric": m, "value": v, "note": n} for m, v, n in score_table(outputs.comparison.scores)]
        self.state.legend = outputs.legendText
        self.state.error_limit = outputs.comparison.error_limit
        self.state.ssim_plot = ssim_png(outputs.comparison.slice_ssim, self.result_node.GetName())
        self._show(RESULT_VIEW, self.result_node.GetID(), outputs.errorNode.GetID(), 0.6)
        self.state.status = f"Compared with '{reference.GetName()}': error map over the synthetic view."

    def cleanup(self) -> None:
        """Delete the uploads (and downloads) folder."""
        shutil.rmtree(self.upload_dir, ignore_errors=True)

    def start(self, host: str = "127.0.0.1", port: int = 8080, allowed_origins=(), idle_timeout: int = 0,
              **options):
        """Serve the page with the :class:`.web_guard.Guard` installed; blocks until the server stops.

        ``idle_timeout``: seconds without any page connected after which the server stops (0, the default: never,
        so results not yet downloaded are not lost).
        """
        from .web_guard import Guard

        # One message may carry a selection of a few files (a case: its contrasts and a mask, or a header and its
        # data); anything larger is refused before wslink allocates it.
        self.guard = Guard(host=host, allowed_origins=allowed_origins, owned_keys=SERVER_OWNED_KEYS,
                           max_message_bytes=4 * MAX_UPLOAD_BYTES + 2 ** 20)
        self.ctrl.on_server_bind.add(self.guard.bind)
        return self.server.start(host=host, port=port, open_browser=False, show_connection_info=False,
                                 timeout=max(0, int(idle_timeout)), **options)

    # --- page -----------------------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        from .web_page import build_page

        build_page(self)
