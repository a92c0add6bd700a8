"""The web page of ``collagan-impute web``: its layout (vuetify3 widgets bound to the server's state) and the
per-slice SSIM picture. The behaviour behind every button is :class:`.web.WebApp`'s.

Example:
    >>> build_page(app)   # once, when the app is made                                   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .web import WebApp


def init_state(app: WebApp, max_upload_bytes: int, one_job_text: str) -> None:
    """The page's state as the server starts: no inputs, no result, the model's name and the upload limit."""
    s = app.state
    s.trame__title = "CollaGAN Impute"
    s.model_name = app.model.card.name
    s.contrasts = app.contrasts
    s.volume_items = []
    s.label_items = []
    for contrast in app.contrasts:
        s[f"input_{contrast}"] = None
    s.target = None
    s.reference = None
    s.lesion = None
    s.running = False
    s.progress = 0
    s.status = f"Model '{app.model.card.name}' ({'+'.join(app.contrasts)}). {one_job_text}"
    s.error = ""
    s.warnings = []
    s.result_name = ""
    s.banner = ""
    s.uncertainty = False
    s.register = False
    s.uncertainty_legend = ""
    s.scores = []
    s.legend = ""
    s.error_limit = 0.0
    s.ssim_plot = ""
    s.max_upload_mb = max_upload_bytes // (1024 * 1024)
    s.change("target")(lambda **_: app._default_reference())


def build_page(app: WebApp) -> None:
    """The page: the panel on the left, the SYNTHETIC banner and the slice views on the right."""
    from trame.ui.vuetify3 import SinglePageLayout
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    with SinglePageLayout(app.server, full_height=True) as layout:
        layout.title.set_text("CollaGAN Impute")
        with layout.toolbar:
            v.VSpacer()
            html.Span("{{ model_name }}", classes="text-caption mr-4")
        with layout.content:
            with v.VContainer(fluid=True, classes="fill-height pa-0"), html.Div(
                    style="display:flex; width:100%; height:calc(100vh - 64px); overflow:hidden;"):
                with html.Div(style="width:420px; min-width:420px; overflow-y:auto; padding:12px;"):
                    panel(app, v, html)
                with html.Div(style="flex:1; display:flex; flex-direction:column; min-width:0;"):
                    html.Div("SYNTHETIC: {{ result_name }}", v_if="result_name", id="synthetic-banner",
                             style="background:#d32f2f; color:white; font-weight:bold; padding:6px 12px;")
                    with html.Div(id="slice-views", style="flex:1; position:relative; min-height:300px;"):
                        app.layout_manager.initialize_layout_grid(layout)

def panel(app: WebApp, v, html) -> None:
    """The numbered steps: load, inputs and target, uncertainty legend, compare, download."""
    with v.VCard(classes="mb-3", title="1. Load a case"):
        with v.VCardText():
            v.VBtn("Load sample case", click=app.load_sample_case, id="load-sample", block=True,
                   classes="mb-2", disabled=("running",))
            # Not a state variable: the files go to the server in a call, never into state shared by all tabs.
            v.VFileInput(update_modelValue="trigger('upload', [$event])", multiple=True,
                         label="Upload NIfTI / NRRD / MHA", accept=".nii,.gz,.nrrd,.nhdr,.mha,.mhd,.raw,.zraw",
                         density="compact", id="upload",
                         hint=("`at most ${max_upload_mb} MB per file`",), persistent_hint=True)
    with v.VCard(classes="mb-3", title="2. Inputs and target"):
        with v.VCardText():
            for contrast in app.contrasts:
                v.VSelect(label=f"Input {contrast}", v_model=(f"input_{contrast}",), items=("volume_items",),
                          clearable=True, density="compact", hide_details=True, classes="mb-2")
            v.VSelect(label="Contrast to impute (target)", v_model=("target",), items=("contrasts",),
                      density="compact", hide_details=True, classes="mb-2", id="target")
            v.VCheckbox(v_model=("uncertainty",), label="Also compute uncertainty (about 3x the time)",
                        density="compact", hide_details=True, id="uncertainty", disabled=("running",))
            v.VCheckbox(v_model=("register",), label="Align inputs first (rigid; for a patient who moved)",
                        density="compact", hide_details=True, id="register", disabled=("running",))
            v.VBtn("Impute missing contrast", click=app.impute, id="impute", color="primary", block=True,
                   disabled=("running",))
            v.VProgressLinear(model_value=("progress",), height=14, classes="my-2", color="primary",
                              id="progress")
            v.VBtn("Cancel", click=app.cancel, id="cancel", block=True, disabled=("!running",))
            html.Div("{{ status }}", id="status", classes="text-caption mt-2")
            v.VAlert(text=("error",), v_if="error", type="error", density="compact", id="error",
                     classes="mt-2")
            with html.Div(v_for="w in warnings", classes="mt-1"):
                v.VAlert(text=("w",), type="warning", density="compact", classes="warning-item")
            html.Div("{{ banner }}", v_if="banner", classes="text-caption mt-2",
                     style="color:#d32f2f; font-weight:bold;")
    with v.VCard(classes="mb-3", title="Uncertainty (not a confidence map)", v_if="uncertainty_legend"):
        with v.VCardText():
            html.Div(style="height:12px; background:linear-gradient(to right, #000004, #781c6d, #ed6925, "
                           "#fcffa4);")
            with html.Div(style="display:flex; justify-content:space-between; font-size:11px;"):
                html.Span("0.05")
                html.Span("0.4 of the 99th percentile")
            html.Div("{{ uncertainty_legend }}", id="uncertainty-legend", classes="text-caption")
    with v.VCard(classes="mb-3", title="3. Compare with an acquired volume", v_if="result_name"):
        with v.VCardText():
            v.VSelect(label="Acquired volume", v_model=("reference",), items=("volume_items",),
                      density="compact", hide_details=True, classes="mb-2")
            v.VSelect(label="Lesion mask (optional)", v_model=("lesion",), items=("label_items",),
                      clearable=True, density="compact", hide_details=True, classes="mb-2")
            v.VBtn("Compare", click=app.compare, id="compare", block=True, disabled=("running",))
            with html.Table(v_if="scores.length", id="scores", style="width:100%; font-size:12px;"):
                with html.Tr():
                    html.Th("Metric", style="text-align:left")
                    html.Th("Value", style="text-align:right")
                    html.Th("Note", style="text-align:left")
                with html.Tr(v_for="row in scores", classes="score-row"):
                    html.Td("{{ row.metric }}", classes="metric")
                    html.Td("{{ row.value }}", classes="value", style="text-align:right")
                    html.Td("{{ row.note }}", style="color:#888")
            with html.Div(v_if="legend", id="legend", classes="mt-2"):
                html.Div(style="height:12px; background:linear-gradient(to right, #3b4cc0, #ffffff, #b40426);")
                with html.Div(style="display:flex; justify-content:space-between; font-size:11px;"):
                    html.Span("-{{ error_limit.toFixed(2) }}")
                    html.Span("0")
                    html.Span("+{{ error_limit.toFixed(2) }}")
                html.Div("{{ legend }}", classes="text-caption")
            html.Img(v_if="ssim_plot", src=("ssim_plot",), id="ssim-plot", style="width:100%;")
            v.VBtn("Scores (CSV)", id="download-scores", v_if="scores.length", block=True, classes="mt-2",
                   click="utils.download(`${result_name.split(' ')[0]}-scores.csv`, trigger('download_scores'), "
                         "'text/csv')")
    with v.VCard(title="4. Download", v_if="result_name"):
        with v.VCardText():
            v.VBtn("Synthetic volume (NIfTI)", id="download-nifti", block=True, classes="mb-2",
                   click="utils.download(`${result_name.split(' ')[0]}-synthetic-collagan.nii.gz`, "
                         "trigger('download_volume'), 'application/gzip')")
            v.VBtn("Provenance (JSON)", id="download-json", block=True,
                   click="utils.download(`${result_name.split(' ')[0]}-synthetic-collagan.json`, "
                         "trigger('download_sidecar'), 'application/json')")


def ssim_png(slice_ssim, title: str) -> str:
    """The per-slice SSIM curve as a PNG data URL, for the page's image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .scene.comparison import slice_ssim_table

    curve = slice_ssim_table(slice_ssim)
    figure, axes = plt.subplots(figsize=(4.5, 2.4), dpi=100)
    axes.plot(curve[:, 0], curve[:, 1], "o-", markersize=3)
    axes.set(xlabel="Axial slice", ylabel="SSIM", title=f"Per-slice SSIM of {title}", ylim=(0, 1))
    axes.title.set_fontsize(9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
